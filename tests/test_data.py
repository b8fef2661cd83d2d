import json

import numpy as np
import pytest
import torch

from sampling_free.data import shapes
from sampling_free.data.catalog import resolve
from sampling_free.data.coco import COCODetection, DatasetError
from sampling_free.data.samplers import GroupedBatchStream


def test_shapes_is_deterministic_by_seed(tmp_path):
    a, b, c = (shapes.write_split(tmp_path / name, "val", 4, seed=seed) for name, seed in
               (("a", 0), ("b", 0), ("c", 1)))
    assert json.loads(a.read_text()) == json.loads(b.read_text())
    assert json.loads(a.read_text())["annotations"] != json.loads(c.read_text())["annotations"]
    img_a, _ = shapes.render_image(0, "val", 2)
    img_b, _ = shapes.render_image(0, "val", 2)
    assert np.array_equal(np.asarray(img_a), np.asarray(img_b))


def test_shapes_has_the_promised_structure(tiny_shapes):
    data = json.loads((tiny_shapes / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(shapes.CLASSES)
    assert all(len(a["segmentation"]["counts"]) > 0 for a in data["annotations"])
    # large-sample properties come from the generator itself: long tail, tiny to large objects, empty images
    objects = [o for i in range(200) for o in shapes.render_image(0, "train", i)[1]]
    counts = np.bincount([o["label"] for o in objects], minlength=len(shapes.CLASSES))
    assert counts[0] > 3 * counts[-1]
    sides = np.sqrt([o["mask"].sum() for o in objects])
    assert sides.min() < 8 and sides.max() > 100
    empty = sum(len(shapes.render_image(0, "train", i)[1]) == 0 for i in range(200))
    assert 2 <= empty <= 25


def test_minival_is_its_own_draw_of_the_same_distribution(tmp_path):
    """Knobs are chosen on ``*_minival`` and results reported on ``*_val``: no image may be shared, and both must be
    draws of one distribution (same object count and size statistics within sampling noise)."""
    for profile in ("shapes", "dense"):
        n = 60 if profile == "shapes" else 20
        drawn = {split: [shapes.render_image(0, split, i, profile) for i in range(n)] for split in ("val", "minival")}
        pixels = {split: {np.asarray(img).tobytes() for img, _ in items} for split, items in drawn.items()}
        assert not pixels["val"] & pixels["minival"]
        counts = {split: np.array([len(objs) for _, objs in items]) for split, items in drawn.items()}
        spread = np.sqrt(counts["val"].var() / n + counts["minival"].var() / n)
        assert abs(counts["val"].mean() - counts["minival"].mean()) < 4 * spread
    assert dict(shapes.PROFILES["shapes"].splits)["minival"] == 300
    assert dict(shapes.PROFILES["dense"].splits)["minival"] == 150


@pytest.mark.parametrize("name, folder", [("shapes_minival", "shapes"), ("shapes_dense_minival", "shapes_dense")])
def test_minival_splits_are_catalog_names(name, folder, monkeypatch, tmp_path):
    made = []
    monkeypatch.setattr(shapes, "ensure_shapes", lambda root, profile: made.append(profile) or tmp_path / folder)
    spec = resolve(name, tmp_path)
    assert spec.ann_file == tmp_path / folder / "annotations" / "instances_minival.json"
    assert spec.image_dir == tmp_path / folder / "minival"


def test_a_second_generator_leaves_the_first_ones_dataset_in_place(tmp_path, monkeypatch):
    """Two runs started together on a fresh clone both generate the dataset: the one finishing last must not
    delete the folder the first is already reading (seen as 'cannot read image' in a parallel compare)."""
    writes = []

    def write(out_dir, **_):
        writes.append(out_dir)
        mine = len(writes)
        if mine == 1:  # while this process writes, another one starts and finishes first
            shapes.ensure_shapes(tmp_path)
        (out_dir / "who").write_text(str(mine))

    monkeypatch.setattr(shapes, "write_dataset", write)
    target = shapes.ensure_shapes(tmp_path)
    assert (target / "who").read_text() == "2"  # the first finisher's files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # no half-written or stale folder left
    (target / "GENERATED.json").write_text("{}")  # an older version is replaced
    assert (shapes.ensure_shapes(tmp_path) / "who").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_round_trip_boxes_are_the_mask_extents(tiny_shapes):
    ds = COCODetection(tiny_shapes / "annotations" / "instances_train.json", tiny_shapes / "train", training=True,
                       with_masks=True)
    assert ds.num_classes == 6 and len(ds) == 16
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape[1:] == ds.image_size(i) and image.dtype == torch.float32
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert ((target["labels"] >= 1) & (target["labels"] <= 6)).all()


def test_hflip_mirrors_boxes_and_pixels(tiny_shapes):
    ds = COCODetection(tiny_shapes / "annotations" / "instances_train.json", tiny_shapes / "train", training=True)
    index = next(i for i in range(len(ds)) if len(ds.annotations(i)[0]))
    (image, target), (flipped, ftarget) = ds[index], ds[(index, True)]
    width = image.shape[-1]
    assert torch.equal(flipped, image.flip(-1))
    expected = target["boxes"].clone()
    expected[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    assert torch.equal(ftarget["boxes"], expected)


def _write_coco(tmp_path, images, annotations, categories=({"id": 3, "name": "a"}, {"id": 7, "name": "b"}),
                with_files=True):
    """An annotation file, and (empty) image files for its images unless ``with_files`` is False."""
    (tmp_path / "img").mkdir(exist_ok=True)
    for image in images if with_files else []:
        (tmp_path / "img" / image["file_name"]).write_bytes(b"")
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return path


def test_crowd_and_degenerate_boxes_are_dropped_in_training_empty_images_kept(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 40},
              {"id": 2, "file_name": "b.jpg", "width": 50, "height": 40}]
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 5, 5], "iscrowd": 0, "area": 25},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 40], "iscrowd": 1, "area": 2000},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [60, 10, 5, 5], "iscrowd": 0, "area": 25},
            {"id": 4, "image_id": 1, "category_id": 3, "bbox": [45, 30, 20, 20], "iscrowd": 0, "area": 400}]
    ds = COCODetection(_write_coco(tmp_path, images, anns), tmp_path / "img", training=True)
    boxes, labels = ds.annotations(0)
    assert boxes.tolist() == [[10, 10, 15, 15], [45, 30, 50, 40]]  # crowd gone, outside dropped, overhang clipped
    assert labels.tolist() == [2, 1]  # category 7 -> label 2, category 3 -> label 1
    assert len(ds) == 2 and len(ds.annotations(1)[0]) == 0


def test_unknown_category_names_file_and_annotation(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 40}]
    anns = [{"id": 99, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5], "iscrowd": 0, "area": 25}]
    with pytest.raises(DatasetError, match=r"ann.json: annotation id 99 has unknown category_id 5"):
        COCODetection(_write_coco(tmp_path, images, anns), tmp_path / "img", training=True)


def test_missing_image_files_are_listed_when_the_dataset_is_built(tmp_path):
    """Found before training, not when (and if) a batch reaches the file."""
    images = [{"id": k, "file_name": f"{k:02d}.jpg", "width": 50, "height": 40} for k in range(1, 10)]
    path = _write_coco(tmp_path, images, [])
    for k in (2, 3, 5, 6, 7, 8, 9):
        (tmp_path / "img" / f"{k:02d}.jpg").unlink()
    with pytest.raises(DatasetError, match=r"ann.json: 7 of the 9 image files it lists are not in .*img: "
                                           r"02.jpg, 03.jpg, 05.jpg, 06.jpg, 07.jpg, \.\.\.$"):
        COCODetection(path, tmp_path / "img", training=False)


def test_an_unreadable_image_names_the_file(tmp_path):
    images = [{"id": 1, "file_name": "broken.jpg", "width": 50, "height": 40}]
    ds = COCODetection(_write_coco(tmp_path, images, []), tmp_path / "img", training=False)
    with pytest.raises(DatasetError, match=r"broken.jpg: cannot read image"):
        ds[0]


def test_malformed_json_names_the_file(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"ann.json: not a valid COCO annotation file"):
        COCODetection(tmp_path / "ann.json", tmp_path / "img", training=True)


def test_catalog(tmp_path):
    spec = resolve("coco:/x/a.json:/x/imgs")
    assert str(spec.ann_file) == "/x/a.json" and str(spec.image_dir) == "/x/imgs"
    with pytest.raises(ValueError, match="did you mean 'coco_2017_val'"):
        resolve("coco_2017_vall", tmp_path)
    with pytest.raises(FileNotFoundError, match="instances_train2017.json not found"):
        resolve("coco_2017_train", tmp_path)


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_batch_stream_is_resumable_and_shards_into_the_same_global_batches():
    groups = [0, 1] * 10 + [1] * 5
    kw = dict(seed=3, hflip_prob=0.5, num_sizes=2)
    full = _take(GroupedBatchStream(groups, 4, **kw), 30)
    assert _take(GroupedBatchStream(groups, 4, start_iter=12, **kw), 18) == full[12:]
    ranks = [_take(GroupedBatchStream(groups, 4, rank=r, world_size=2, **kw), 30) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == full
    for batch in full:  # aspect grouping: one orientation per batch
        assert len({groups[i] for i, _, _ in batch}) == 1
    flips = [f for batch in full for _, f, _ in batch]
    assert 0.3 < sum(flips) / len(flips) < 0.7
    assert _take(GroupedBatchStream(groups, 4, seed=4, hflip_prob=0.5, num_sizes=2), 30) != full


def test_the_dense_profile_holds_dozens_of_small_objects_and_leaves_shapes_as_it_was(tmp_path):
    from sampling_free.cli import main

    assert main(["data", "shapes_dense", "--out", str(tmp_path / "dense"), "--train-images", "6",
                 "--val-images", "1"]) == 0
    ann = json.loads((tmp_path / "dense" / "annotations" / "instances_train.json").read_text())
    per_image = [sum(a["image_id"] == i["id"] for a in ann["annotations"]) for i in ann["images"]]
    sides = [min(i["width"], i["height"]) for i in ann["images"]]
    extents = [max(a["bbox"][2], a["bbox"][3]) for a in ann["annotations"]]
    assert min(per_image) >= 15 and max(per_image) <= 60  # a few may be hidden under later objects
    assert min(sides) >= 256 and max(sides) <= 320 and max(extents) <= 32 * 2 ** 0.5 + 1  # a rotated 32 px square
    assert ann["info"]["description"].startswith("sampling-free built-in dense dataset")
    # the default profile draws what it drew before profiles existed (train images 0 and 7 of seed 0, as the
    # generator of v0.1 wrote them)
    for index, size, labels in ((0, (213, 228), [5, 0, 1]), (7, (255, 223), [0, 1, 1])):
        image, objects = shapes.render_image(0, "train", index)
        assert image.size == size and [o["label"] for o in objects] == labels
