"""Prior counting on hand-built cases (spec §14.7 d) and the resize rule it relies on."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator

from sampling_free.modeling.common import DetectionTransform, build_transform
from sampling_free.modeling.prior_rules import AnchorPriorCounter
from sampling_free.prior import count_dataset, padded_size, resized_size
from paths import CONFIGS


class GridBackbone(torch.nn.Module):
    """One feature level at stride 16, like a real backbone's shape behaviour and nothing else."""

    def forward(self, x):
        return OrderedDict(p=torch.zeros(x.shape[0], 1, x.shape[-2] // 16, x.shape[-1] // 16))


def make_counter(num_classes=3):
    # 64x64 input -> 4x4 grid, one 16x16 anchor per cell centred at (16j, 16i): anchor (i, j) = [16j-8, 16i-8, ...]
    return AnchorPriorCounter(backbone=GridBackbone(), anchor_generator=AnchorGenerator(((16,),), ((1.0,),)),
                              matcher=det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True),
                              num_classes=num_classes)


# A = [8,8,24,24] (class 1) is exactly anchor (1,1): IoU 1 -> foreground.
# D = [8,24,38,40] (class 2, 30x16): anchor (2,1) IoU 256/480 = 0.533 -> foreground;
#     anchor (2,2) = [24,24,40,40] IoU 224/512 = 0.4375 -> in [0.4, 0.5): ignored.
# B = [44,2,56,12] (class 3, 12x10): best anchor (0,3) = [40,-8,56,8] IoU 72/304 = 0.237 < 0.4, so it is
#     foreground only as B's low-quality best match; anchor (1,3) IoU 48/328 = 0.146 -> background.
# 16 anchors: 3 foreground (one per class), 1 ignored, 12 background.
BOXES = torch.tensor([[8.0, 8, 24, 24], [8, 24, 38, 40], [44, 2, 56, 12]])
LABELS = torch.tensor([1, 2, 3])


def test_anchors_are_the_hand_built_grid():
    anchors = make_counter().anchors((64, 64))
    assert anchors.shape == (16, 4)
    assert anchors[5].tolist() == [8.0, 8.0, 24.0, 24.0]  # (1, 1)
    assert anchors[3].tolist() == [40.0, -8.0, 56.0, 8.0]  # (0, 3)


def test_hand_counted_foreground_background_with_low_quality_and_ignored():
    per_class, background = make_counter().count((64, 64), (64, 64), BOXES, LABELS)
    assert per_class.tolist() == [1.0, 1.0, 1.0]
    assert background == 12.0


def test_without_low_quality_matches_the_small_box_has_no_anchor():
    counter = make_counter()
    counter.matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=False)
    per_class, background = counter.count((64, 64), (64, 64), BOXES, LABELS)
    assert per_class.tolist() == [1.0, 1.0, 0.0]
    assert background == 13.0


def test_image_without_objects_is_all_background():
    per_class, background = make_counter().count((64, 64), (64, 64), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert per_class.tolist() == [0.0, 0.0, 0.0] and background == 16.0


class StubDataset:
    name = "stub"

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def image_size(self, i):
        return self.records[i][0]

    def annotations(self, i):
        return self.records[i][1].numpy(), self.records[i][2].numpy()


def test_count_dataset_sums_images_and_weights_flips():
    # The horizontally flipped image (x -> 64 - x) hand-counts the same: A' = [40,8,56,24] is anchor (1,3);
    # D' = [26,24,56,40] has (2,3) at 0.533 and (2,2) at 0.4375; B' = [8,2,20,12] low-quality-matches (0,1).
    empty = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    ds = StubDataset([((64, 64), BOXES, LABELS), ((64, 64), *empty)])
    for hflip_prob in (0.0, 0.5, 1.0):
        counts = count_dataset([ds], make_counter(), min_sizes=[64], max_size=64, size_divisibility=32,
                               hflip_prob=hflip_prob)
        assert counts["foreground_per_class"].tolist() == [1.0, 1.0, 1.0]
        assert counts["background"] == 12.0 + 16.0
        assert counts["images"] == 2 and counts["empty_images"] == 1


def test_count_dataset_shards_add_up():
    ds = StubDataset([((64, 64), BOXES, LABELS)] * 3)
    kwargs = dict(min_sizes=[64], max_size=64, size_divisibility=32, hflip_prob=0.5)
    whole = count_dataset([ds], make_counter(), **kwargs)
    shards = [count_dataset([ds], make_counter(), rank=r, world_size=2, **kwargs) for r in range(2)]
    assert shards[0]["images"] + shards[1]["images"] == 3
    assert np.allclose(shards[0]["foreground_per_class"] + shards[1]["foreground_per_class"],
                       whole["foreground_per_class"])


@pytest.mark.parametrize("hw,min_size,max_size", [((480, 640), 800, 1333), ((333, 1000), 800, 1333),
                                                   ((217, 163), 160, 256), ((100, 301), 128, 200)])
def test_resize_rule_matches_torchvision_transform(hw, min_size, max_size):
    t = DetectionTransform(train_sizes=[min_size], train_max_size=max_size, test_size=min_size,
                           test_max_size=max_size, image_mean=[0, 0, 0], image_std=[1, 1, 1], size_divisible=32)
    t.train()
    images, _ = t([torch.zeros(3, *hw)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert tuple(images.image_sizes[0]) == resized_size(*hw, min_size, max_size)
    assert tuple(images.tensors.shape[-2:]) == padded_size(*resized_size(*hw, min_size, max_size), 32)


def test_sampler_chosen_size_is_used_by_the_transform():
    t = DetectionTransform(train_sizes=[100, 200], train_max_size=1000, test_size=150, test_max_size=1000,
                           image_mean=[0, 0, 0], image_std=[1, 1, 1], size_divisible=1)
    t.train()
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1]), "min_size": 200}
    images, targets = t([torch.zeros(3, 50, 80)], [target])
    assert tuple(images.image_sizes[0]) == (200, 320)
    assert targets[0]["boxes"].tolist() == [[0.0, 0.0, 40.0, 40.0]]
    t.eval()
    images, _ = t([torch.zeros(3, 50, 80)])
    assert tuple(images.image_sizes[0]) == (150, 240)


def test_rpn_rule_class_agnostic_with_straddling_anchors_ignored():
    # RPN thresholds 0.7 / 0.3 and the visibility rule (straddle 0): the 9 anchors with i, j >= 1 lie inside the
    # 64x64 image. A -> (1,1) IoU 1: foreground. D: best anchor (2,1) at 0.533 is between the thresholds but is D's
    # low-quality best match: foreground; (2,2) at 0.4375: ignored. B's best anchor (0,3) straddles the border, so it
    # is dropped *after* matching (as the RPN loss does) and (1,3) at 0.146 stays background.
    counter = AnchorPriorCounter(backbone=GridBackbone(), anchor_generator=AnchorGenerator(((16,),), ((1.0,),)),
                                 matcher=det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True), num_classes=1,
                                 class_agnostic=True, straddle_thresh=0)
    per_class, background = counter.count((64, 64), (64, 64), BOXES, LABELS)
    assert per_class.tolist() == [2.0] and background == 6.0
    # an empty image: every inside anchor is background
    _, background = counter.count((64, 64), (64, 64), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert background == 9.0


def test_estimate_is_cached_under_the_annotations_it_read(tmp_path):
    from sampling_free.config import load_config
    from sampling_free.prior import prior_with_counts, setting_from_config

    cfg = load_config(values={"MODEL.SAMPLING_FREE.PRIOR_CACHE_DIR": str(tmp_path), "INPUT.MIN_SIZE_TRAIN": [64],
                              "INPUT.MAX_SIZE_TRAIN": 64})

    class Model:
        transform = build_transform(cfg)

        def prior_counter(self):
            return make_counter()

    ds = StubDataset([((64, 64), BOXES, LABELS)])
    first = prior_with_counts(Model(), [ds], setting_from_config(cfg, Model()))
    assert first["source"] == "estimated"
    assert first["prior"] == pytest.approx(3 / 15 / 3)  # 3 foreground, 12 background, 3 classes
    assert prior_with_counts(Model(), [ds], setting_from_config(cfg, Model()))["source"].startswith("cache")
    edited = StubDataset([((64, 64), BOXES[:2], LABELS[:2])])  # same name, one box fewer
    second = prior_with_counts(Model(), [edited], setting_from_config(cfg, Model()))
    assert second["source"] == "estimated" and second["cache_key"] != first["cache_key"]


class _OneByOne:
    """The brute-force path: every box against every anchor, through the matcher itself."""

    def __init__(self, counter):
        self.counter, self.num_classes = counter, counter.num_classes

    def count(self, *args):
        return self.counter.count(*args)


def _random_dataset(seed, n=12):
    g = np.random.default_rng(seed)
    records = []
    for k in range(n):
        h, w = int(g.integers(150, 400)), int(g.integers(150, 400))
        m = int(g.integers(0, 9))
        size = np.exp(g.uniform(np.log(3), np.log(min(h, w)), size=(m, 2)))
        xy = g.uniform(0, 1, size=(m, 2)) * (np.array([w, h]) - size * 0.5)
        boxes = np.concatenate([xy, np.minimum(xy + size, [w, h])], 1).astype(np.float32)
        if k == 0 and m:  # exact duplicates and a shared corner: ties everywhere
            boxes = np.concatenate([boxes, boxes[:1], boxes[:1] + [0, 0, 5, 0]])
        records.append(((h, w), torch.from_numpy(boxes), torch.from_numpy(g.integers(1, 4, len(boxes)))))
    return StubDataset(records)


@pytest.mark.parametrize("rule", ["retinanet", "rpn", "no_low_quality"])
def test_windowed_counting_equals_every_box_against_every_anchor(rule):
    from sampling_free.config import load_config
    from sampling_free.modeling import build_model

    config = str(CONFIGS / "quickstart/faster_rcnn_mobilenet_v2_shapes.yaml") if rule == "rpn" else \
        str(CONFIGS / "quickstart/retinanet_mobilenet_v2_shapes.yaml")
    cfg = load_config(config, values={"MODEL.BACKBONE.WEIGHTS": "", "MODEL.BACKBONE.NAME": "resnet18"})
    counter = build_model(cfg, 3).prior_counter()
    if rule == "no_low_quality":
        counter.matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=False)
    kwargs = dict(min_sizes=[128, 200], max_size=333, size_divisibility=32, hflip_prob=0.5)
    for seed in range(3):
        ds = _random_dataset(seed)
        fast = count_dataset([ds], counter, **kwargs)
        slow = count_dataset([ds], _OneByOne(counter), **kwargs)
        assert fast["foreground_per_class"].tolist() == slow["foreground_per_class"].tolist()
        assert fast["background"] == slow["background"]
        assert fast["foreground_per_class"].sum() > 0


def test_sampled_estimate_counts_exactly_the_chosen_images_with_a_standard_error(tmp_path):
    from sampling_free.config import load_config
    from sampling_free.modeling import build_model
    from sampling_free.prior import prior_with_counts, sample_folds, setting_from_config

    cfg = load_config(str(CONFIGS / "quickstart/retinanet_mobilenet_v2_shapes.yaml"),
                      values={"MODEL.BACKBONE.WEIGHTS": "", "MODEL.BACKBONE.NAME": "resnet18",
                              "INPUT.MIN_SIZE_TRAIN": [128], "INPUT.MAX_SIZE_TRAIN": 200,
                              "MODEL.SAMPLING_FREE.PRIOR_CACHE_DIR": str(tmp_path), "MODEL.SAMPLING_FREE.PRIOR_IMAGES": 30})
    model = build_model(cfg, 3)
    ds = _random_dataset(7, n=60)
    sampled = prior_with_counts(model, [ds], setting_from_config(cfg, model))
    chosen = np.sort(np.concatenate(sample_folds(60, 30)))
    assert len(set(chosen.tolist())) == 30
    # independent: the chosen records as a dataset of their own, counted in one go
    subset = StubDataset([ds.records[i] for i in chosen])
    exact_subset = prior_with_counts(model, [subset], setting_from_config(_with(cfg, {"MODEL.SAMPLING_FREE.PRIOR_IMAGES": 0}), model))
    assert sampled["images"] == 30 and sampled["images_in_dataset"] == 60
    assert sampled["num_foreground"] == pytest.approx(exact_subset["num_foreground"], rel=1e-12)
    assert sampled["num_background"] == pytest.approx(exact_subset["num_background"], rel=1e-12)
    assert sampled["prior_standard_error"] > 0
    full = prior_with_counts(model, [ds], setting_from_config(_with(cfg, {"MODEL.SAMPLING_FREE.PRIOR_IMAGES": 0}), model))
    assert full["prior_standard_error"] is None and full["images"] == 60
    assert abs(sampled["prior"] - full["prior"]) < 5 * sampled["prior_standard_error"]
    assert sampled["cache_key"] != full["cache_key"]


def _with(cfg, values):
    from sampling_free.config.loader import with_values

    return with_values(cfg, values)


def test_jackknife_standard_error_by_hand():
    from sampling_free.prior import jackknife_standard_error

    folds = [{"foreground_per_class": np.array([1.0]), "background": 9.0},
             {"foreground_per_class": np.array([2.0]), "background": 8.0}]
    # leave fold 0 out: 2/10; leave fold 1 out: 1/10; (k-1)/k * sum of squared deviations = 1/2 * 2 * 0.05^2
    assert jackknife_standard_error(folds, 1) == pytest.approx(0.05)
    assert jackknife_standard_error(folds, 2) == pytest.approx(0.025)  # π is per class
    assert jackknife_standard_error(folds, 1, sampled_fraction=0.75) == pytest.approx(0.025)  # x sqrt(1 - 3/4)


def test_windowed_counting_finds_best_anchors_tied_across_shapes_of_equal_area():
    """A box smaller than every anchor has the same IoU with each anchor that contains it; on the COCO RetinaNet
    anchors the 1:2 and 2:1 shapes have equal area (46x22 = 22x46 = 1012 px, the square one 1024), so such a box's
    low-quality matches come from two shapes. The search must find the second shape's ties, whose IoU equals the
    first shape's best only up to float rounding in any shortcut (a bug found at COCO scale)."""
    from torchvision.ops import box_iou

    from sampling_free.config import load_config
    from sampling_free.modeling import build_model

    cfg = load_config(str(CONFIGS / "retinanet/retinanet_R_50_FPN_1x.yaml"),
                      values={"MODEL.BACKBONE.WEIGHTS": "", "MODEL.BACKBONE.NAME": "resnet18"})
    counter = build_model(cfg, 3).prior_counter()
    g = np.random.default_rng(0)
    xy = g.uniform(20, 280, size=(12, 2))
    small = np.concatenate([xy, xy + g.uniform(5, 11, size=(12, 2))], 1).astype(np.float32)
    ds = StubDataset([((320, 320), torch.from_numpy(small), torch.from_numpy(g.integers(1, 4, 12)))])
    kwargs = dict(min_sizes=[320], max_size=320, size_divisibility=32, hflip_prob=0.0)
    anchors = counter.anchors((320, 320))
    iou = box_iou(torch.from_numpy(small), anchors)
    tied = iou == iou.max(1, keepdim=True).values
    shape_of = torch.arange(len(anchors)) % 9  # 9 shapes per location on the first level
    assert any(len(set(shape_of[row].tolist())) > 1 for row in tied), "no box with ties across shapes: no test"
    fast = count_dataset([ds], counter, **kwargs)
    slow = count_dataset([ds], _OneByOne(counter), **kwargs)
    assert fast["foreground_per_class"].tolist() == slow["foreground_per_class"].tolist()
    assert fast["background"] == slow["background"]


def test_counting_in_threads_gives_the_serial_counts_and_restores_torch_threads():
    from sampling_free.config import load_config
    from sampling_free.modeling import build_model

    cfg = load_config(str(CONFIGS / "quickstart/faster_rcnn_mobilenet_v2_shapes.yaml"),
                      values={"MODEL.BACKBONE.WEIGHTS": "", "MODEL.BACKBONE.NAME": "resnet18"})
    counter = build_model(cfg, 3).prior_counter()
    ds = _random_dataset(5, n=40)
    kwargs = dict(min_sizes=[128, 160, 200], max_size=333, size_divisibility=32, hflip_prob=0.5, chunk=8)
    threads = torch.get_num_threads()
    serial = count_dataset([ds], counter, workers=1, **kwargs)
    parallel = count_dataset([ds], counter, workers=3, **kwargs)
    assert torch.get_num_threads() == threads
    assert serial["foreground_per_class"].tolist() == parallel["foreground_per_class"].tolist()
    assert serial["background"] == parallel["background"] and serial["images"] == parallel["images"] == 40
