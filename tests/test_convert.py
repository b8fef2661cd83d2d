"""``sampling_free.convert``: stock torchvision detectors made sampling-free.

* with every switch off, a converted model *is* the stock model (same losses, same detections);
* with the switches on, it computes what our own family computes when built from the equivalent config, on the
  same weights and batch (the sampling-free code exists once);
* π is counted with the model's own transform, anchors and matcher, checked against a count done here with
  torchvision's pieces alone.
"""
import json

import pytest
import torch
import torchvision
from torchvision.models import detection
from torchvision.ops import box_iou

import sampling_free
from sampling_free.config import load_config
from sampling_free.modeling import build_model
from sampling_free.modeling.contract import SamplingFreeDetector

SIZE = {"min_size": 128, "max_size": 160}
OFF = {"no_heuristic": False, "bias_init": False, "guided_loss": False, "adaptive_threshold": False}
R50 = {"MODEL.BACKBONE.NAME": "resnet50", "MODEL.BACKBONE.WEIGHTS": "", "MODEL.BACKBONE.NORM": "BN",
       "MODEL.BACKBONE.TRAINABLE_LAYERS": 5, "MODEL.FPN.OUT_CHANNELS": 256, "INPUT.MIN_SIZE_TRAIN": [128],
       "INPUT.MAX_SIZE_TRAIN": 160, "INPUT.MIN_SIZE_TEST": 128, "INPUT.MAX_SIZE_TEST": 160,
       "MODEL.SAMPLING_FREE_ON": True}
# Our configs equivalent to torchvision's builders (num_classes=4: background + 3 classes)
EQUIVALENT = {
    "retinanet": {**R50, "MODEL.META_ARCHITECTURE": "RetinaNet", "MODEL.FPN.MIN_LEVEL": 3,
                  "MODEL.FPN.TOP_BLOCK": "p6p7_from_p5", "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1,
                  # torchvision truncates 2^(1/3) x and 2^(2/3) x to whole pixels
                  "MODEL.ANCHOR_GENERATOR.SIZES": [[s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))]
                                                   for s in (32, 64, 128, 256, 512)],
                  "MODEL.RETINANET.LOSS_STYLE": "torchvision", "MODEL.RETINANET.BBOX_REG_LOSS": "l1",
                  "MODEL.RETINANET.BBOX_REG_WEIGHTS": [1.0, 1.0, 1.0, 1.0], "MODEL.RETINANET.BACKGROUND_COLUMN": True,
                  "TEST.DETECTIONS_PER_IMG": 300},
    "fcos": {**R50, "MODEL.META_ARCHITECTURE": "FCOS", "MODEL.FPN.MIN_LEVEL": 3, "MODEL.FPN.TOP_BLOCK": "p6p7_from_p5",
             "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [1.0],
             "MODEL.ANCHOR_GENERATOR.SIZES": [[8], [16], [32], [64], [128]], "MODEL.FCOS.SCORE_THRESH": 0.2,
             "MODEL.FCOS.THRESHOLD_ON": "combined", "MODEL.FCOS.BACKGROUND_COLUMN": True},
    "faster_rcnn": {**R50, "MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.FPN.MIN_LEVEL": 2,
                    "MODEL.FPN.TOP_BLOCK": "maxpool", "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1,
                    "MODEL.RPN.PRE_NMS_TOP_N_TRAIN": 2000, "MODEL.RPN.POST_NMS_TOP_N_TRAIN": 2000,
                    "MODEL.RPN.STRADDLE_THRESH": -1.0, "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 1 / 9},
}
BUILDERS = {"retinanet": detection.retinanet_resnet50_fpn, "fcos": detection.fcos_resnet50_fpn,
            "faster_rcnn": detection.fasterrcnn_resnet50_fpn}
# every other builder convert() names: it must be the stock model with the switches off
MORE_BUILDERS = {"retinanet_v2": detection.retinanet_resnet50_fpn_v2, "faster_rcnn_v2": detection.fasterrcnn_resnet50_fpn_v2,
                 "faster_rcnn_mobilenet": detection.fasterrcnn_mobilenet_v3_large_fpn,
                 "faster_rcnn_mobilenet_320": detection.fasterrcnn_mobilenet_v3_large_320_fpn,
                 "mask_rcnn": detection.maskrcnn_resnet50_fpn, "mask_rcnn_v2": detection.maskrcnn_resnet50_fpn_v2,
                 "ssdlite": detection.ssdlite320_mobilenet_v3_large, "ssd300": detection.ssd300_vgg16}


def stock(name, **kwargs):
    torch.manual_seed(0)
    builder = {**BUILDERS, **MORE_BUILDERS}[name]
    size = {} if name.startswith("ssd") else SIZE  # SSDs resize to their own fixed size
    return builder(weights=None, weights_backbone=None, num_classes=4, **size, **kwargs)


def batch():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 128, 160, generator=g), torch.rand(3, 128, 160, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 60, 90], [70, 10, 150, 60], [100, 70, 120, 100]]),
                "labels": torch.tensor([1, 3, 2])},
               {"boxes": torch.tensor([[30.0, 30, 110, 120]]), "labels": torch.tensor([2])}]
    for t in targets:  # box-shaped masks, for Mask R-CNN
        t["masks"] = torch.zeros(len(t["boxes"]), 128, 160, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(t["boxes"].int().tolist()):
            t["masks"][k, y1:y2, x1:x2] = 1
    return images, targets


def run(model, train: bool):
    """Losses (train) or detections (eval) on the batch, with the RNG the samplers draw from reset."""
    images, targets = batch()
    model.train(train)
    torch.manual_seed(7)
    with torch.set_grad_enabled(train):
        return model(images, targets) if train else model(images)


def assert_same_detections(a, b, label_shift=0):
    for x, y in zip(a, b):
        assert len(x["boxes"]) == len(y["boxes"]) > 0
        assert torch.allclose(x["boxes"], y["boxes"], atol=1e-4) and torch.allclose(x["scores"], y["scores"], atol=1e-6)
        assert torch.equal(x["labels"], y["labels"] + label_shift)


@pytest.mark.parametrize("name", [*BUILDERS, *MORE_BUILDERS])
def test_with_every_switch_off_it_is_the_stock_model(name):
    model = stock(name)
    converted = sampling_free.convert(stock(name), **OFF)
    want, got = run(model, True), run(converted, True)
    assert list(got) == list(want)  # torchvision's loss names
    for key in want:
        assert got[key].item() == pytest.approx(want[key].item(), rel=1e-5), key
    if name.startswith(("retinanet", "fcos")):  # untrained scores are ~0.01, under 0.05 / 0.2: compare below
        model.score_thresh = converted.score_thresh = 0.001
    assert_same_detections(run(converted, False), run(model, False))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_converted_equals_our_family_built_from_the_equivalent_config(name):
    """Same weights, same batch, both sampling-free with the same π: same losses (by position: a converted
    model keeps torchvision's loss names), same detections. Tolerance: 1e-5 relative on losses, 1e-4 px on boxes.
    The bias is left at the stock prior 0.01 (bias_init off): untrained, every score is then about 0.01, above
    the adaptive threshold π · C = 0.006, so that there are detections to compare."""
    converted = sampling_free.convert(stock(name), prior=2e-3, bias_init=False)
    ours = build_model(load_config(values={**EQUIVALENT[name], "MODEL.SAMPLING_FREE.BIAS_INIT": False}), 3)
    missing, unexpected = ours.load_state_dict(converted.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("prior.") for k in missing)
    ours.set_prior(2e-3)
    assert isinstance(converted, SamplingFreeDetector) and isinstance(ours, SamplingFreeDetector)
    a, b = run(converted, True), run(ours, True)
    assert [v.item() for v in b.values()] == pytest.approx([v.item() for v in a.values()], rel=1e-5)
    assert_same_detections(run(ours, False), run(converted, False))


def test_every_weight_is_kept_but_the_biases_set_from_the_prior():
    model = stock("retinanet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = sampling_free.convert(model, prior=1e-3)
    after = converted.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["head.classification_head.cls_logits.bias"]
    assert torch.allclose(after[changed[0]], torch.full_like(after[changed[0]], -6.906755), atol=1e-5)
    assert converted.describe_prior()["score_threshold"] == pytest.approx(3e-3)  # π · C, C = 3 classes


def brute_force_prior(model, images_and_boxes, hflip=False):
    """π counted with torchvision's own pieces: the model's transform resizes, its anchor generator places anchors
    on the real feature maps, its matcher labels them; C = classes of a model whose column 0 is background."""
    fg = bg = 0
    model.eval()
    for image, boxes in images_and_boxes:
        image_list, targets = model.transform([image], [{"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}])
        features = list(model.backbone(image_list.tensors).values())
        anchors = model.anchor_generator(image_list, features)[0]
        matched = model.proposal_matcher(box_iou(targets[0]["boxes"], anchors))
        fg += int((matched >= 0).sum())
        bg += int((matched == -1).sum())
    return fg / (fg + bg) / (model.head.classification_head.num_classes - 1)


def test_estimate_prior_counts_with_the_models_own_pieces(tmp_path):
    model = stock("retinanet")
    g = torch.Generator().manual_seed(3)
    images = []
    for k in range(3):
        h, w = (100, 150) if k % 2 else (140, 120)
        x1, y1 = torch.randint(0, w // 2, (4,), generator=g).float(), torch.randint(0, h // 2, (4,), generator=g).float()
        boxes = torch.stack([x1, y1, x1 + 8 + 30 * torch.rand(4, generator=g), y1 + 8 + 30 * torch.rand(4, generator=g)], 1)
        images.append((torch.rand(3, h, w, generator=g), boxes))
    want = brute_force_prior(model, images)
    # a dataset of (image, target), as torchvision's detection tutorial writes them; flips off to match
    dataset = [(im, {"boxes": b, "labels": torch.tensor([1, 2, 3, 1])}) for im, b in images]
    assert sampling_free.estimate_prior(model, dataset, hflip_prob=0.0) == pytest.approx(want, rel=1e-9)
    # the same annotations as a COCO file: nothing but sizes and boxes is read
    coco = {"images": [{"id": k + 1, "file_name": f"{k}.jpg", "height": im.shape[1], "width": im.shape[2]}
                       for k, (im, _) in enumerate(images)],
            "annotations": [{"id": 10 * k + j, "image_id": k + 1, "category_id": 1 + j % 3, "iscrowd": 0,
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": 1.0}
                            for k, (_, boxes) in enumerate(images) for j, b in enumerate(boxes.tolist())],
            "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}
    (tmp_path / "train.json").write_text(json.dumps(coco))
    assert sampling_free.estimate_prior(model, str(tmp_path / "train.json"), hflip_prob=0.0) == \
        pytest.approx(want, rel=1e-5)
    converted = sampling_free.convert(model, annotations=str(tmp_path / "train.json"), hflip_prob=0.0)
    assert converted.prior.get() == pytest.approx(want, rel=1e-5)


def test_what_convert_refuses():
    with pytest.raises(TypeError, match="does not know KeypointRCNN; it converts stock torchvision detectors: .*RetinaNet"):
        sampling_free.convert(detection.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2))
    with pytest.raises(TypeError, match=r"unknown switch\(es\) \['focal'\]"):
        sampling_free.convert(stock("retinanet"), prior=1e-3, focal=False)
    with pytest.raises(ValueError, match="give annotations= .* or prior="):
        sampling_free.convert(stock("retinanet"))
    converted = sampling_free.convert(stock("retinanet"), prior=1e-3)
    with pytest.raises(TypeError, match="already sampling-free"):
        sampling_free.convert(converted, prior=1e-3)
    assert torchvision.__version__.startswith("0.29")


@pytest.mark.parametrize("name, biases", [
    ("retinanet", {"head.classification_head.cls_logits.bias"}),
    ("faster_rcnn_mobilenet", {"rpn.head.cls_logits.bias"})])
def test_convert_and_estimate_prior_touch_nothing_but_the_documented_biases(name, biases, tmp_path, monkeypatch):
    """Counting π on a cold cache runs the backbone once per input size to learn its grids; on a model in training
    mode with trainable BatchNorm that must not move a running statistic or ``num_batches_tracked`` (a BatchNorm
    with momentum=None averages with it). Every tensor but the biases set from π stays bit-for-bit equal."""
    monkeypatch.setenv("SAMPLING_FREE_CACHE", str(tmp_path / "cache"))
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 120, "width": 150},
                       {"id": 2, "file_name": "b.jpg", "height": 150, "width": 100}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [10, 20, 40, 30], "area": 1.0},
                            {"id": 2, "image_id": 2, "category_id": 2, "iscrowd": 0, "bbox": [5, 5, 60, 90], "area": 1.0}],
            "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}
    (tmp_path / "train.json").write_text(json.dumps(coco))
    model = stock(name).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.training and m.weight.requires_grad for m in norms)  # the case that went wrong
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampling_free.estimate_prior(model, str(tmp_path / "train.json"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [n for n, m in model.named_modules() if not m.training] == []  # modes given back too
    converted = sampling_free.convert(model, annotations=str(tmp_path / "train.json"))
    after = converted.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == biases
