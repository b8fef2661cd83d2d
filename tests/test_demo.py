"""``sampling-free demo`` and the drawing under it: colours where the boxes and masks are, and nowhere else; and
``sampling-free predict``, the same detections as COCO results."""
import json

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from sampling_free.api import Detector, load_image
from sampling_free.cli import build_parser, main
from sampling_free.data import shapes
from sampling_free.visualize import DEFAULT_SCORE_THRESHOLD, MASK_ALPHA, class_colour, draw_detections
from tiny_models import CLASS_NAMES, save_tiny_checkpoint

GREY = 200


def read_image(path):
    with Image.open(path) as img:
        return pil_to_tensor(img)


def _pixel(image, x, y):
    return tuple(image[:, y, x].tolist())


def _detections(boxes, labels, scores, masks=None):
    d = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
         "scores": torch.tensor(scores), "class_names": [CLASS_NAMES[k - 1] for k in labels]}
    if masks is not None:
        d["masks"] = masks
    return d


def test_box_colour_on_the_border_and_nowhere_else():
    image = torch.full((3, 100, 160), GREY, dtype=torch.uint8)
    # a kept detection (square, 0.9) and one under the drawing threshold (circle, 0.1)
    drawn = draw_detections(image, _detections([[10, 20, 130, 90], [5, 5, 60, 60]], [2, 1], [0.9, 0.1]))
    colour = class_colour(2)
    for x, y in [(10, 60), (130, 60), (70, 90), (100, 20)]:  # left, right, bottom, top (right of the tag) edges
        assert _pixel(drawn, x, y) == colour, (x, y)
    for x, y in [(70, 70), (110, 80), (3, 3), (150, 95), (140, 50)]:  # inside under the tag, and outside
        assert _pixel(drawn, x, y) == (GREY,) * 3, (x, y)
    has_colour = (drawn == torch.tensor(colour)[:, None, None]).all(0)
    ys, xs = torch.where(has_colour)
    assert xs.min() >= 10 and xs.max() <= 130 and ys.min() >= 20 and ys.max() <= 90
    assert not (drawn == torch.tensor(class_colour(1))[:, None, None]).all(0).any()  # the 0.1 one is not drawn
    tag = drawn[:, 22:32, 12:60]  # "square 0.90" in (anti-aliased) black on the box colour, top-left inside
    assert (tag < 60).all(0).any() and (tag == torch.tensor(colour)[:, None, None]).all(0).any()


def test_masks_are_blended_translucently_inside_the_mask_only():
    image = torch.full((3, 80, 80), GREY, dtype=torch.uint8)
    masks = torch.zeros(1, 80, 80, dtype=torch.bool)
    masks[0, 30:50, 30:50] = True
    drawn = draw_detections(image, _detections([[20, 20, 60, 60]], [3], [0.8], masks))
    expected = [round(MASK_ALPHA * c + (1 - MASK_ALPHA) * GREY) for c in class_colour(3)]
    assert all(abs(a - b) <= 1 for a, b in zip(_pixel(drawn, 40, 45), expected))
    assert _pixel(drawn, 25, 55) == (GREY,) * 3  # inside the box, outside the mask
    assert _pixel(drawn, 20, 40) == class_colour(3)  # the outline is drawn over the mask layer


def test_the_cli_default_is_the_drawing_default():
    args = build_parser().parse_args(["demo", "--weights", "w.pth", "--out", "o", "a.jpg"])
    assert args.score_threshold == DEFAULT_SCORE_THRESHOLD


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two images in a folder and one elsewhere, of the built-in dataset (different sizes)."""
    root = tmp_path_factory.mktemp("images")
    (root / "folder").mkdir()
    for k, target in enumerate([root / "folder" / "a.jpg", root / "folder" / "b.png", root / "c.jpg"]):
        shapes.render_image(0, "demo", k)[0].save(target)
    return root


@pytest.mark.parametrize("arch", ["retinanet", "mask_rcnn", "ssd", "atss"])
def test_demo_writes_the_drawing_of_the_models_own_detections(images, tmp_path, arch):
    weights = save_tiny_checkpoint(tmp_path / "run", arch)
    out = tmp_path / "drawn"
    assert main(["demo", "--weights", str(weights), str(images / "folder"), str(images / "c.jpg"), "--out", str(out),
                 "--score-threshold", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    detector = Detector.from_checkpoint(weights)
    for source in [images / "folder" / "a.jpg", images / "folder" / "b.png", images / "c.jpg"]:
        png, image = read_image(str(out / f"{source.stem}.png")), load_image(source)
        detections = detector.predict(image)
        assert len(detections["boxes"]) > 0
        assert torch.equal(png, draw_detections(image, detections, score_threshold=0))
        if arch == "mask_rcnn":  # the masks are part of the picture
            no_masks = {k: v for k, v in detections.items() if k != "masks"}
            assert not torch.equal(png, draw_detections(image, no_masks, score_threshold=0))


def test_demo_draws_nothing_under_the_default_threshold(images, tmp_path):
    weights = save_tiny_checkpoint(tmp_path / "run", "retinanet")  # untrained: every score is about 0.01
    assert main(["demo", "--weights", str(weights), str(images / "c.jpg"), "--out", str(tmp_path / "o")]) == 0
    original = (load_image(images / "c.jpg") * 255).round().to(torch.uint8)
    assert torch.equal(read_image(str(tmp_path / "o" / "c.png")), original)


def test_demo_without_a_config_names_what_is_missing(images, tmp_path):
    weights = save_tiny_checkpoint(tmp_path / "run", "retinanet")
    (tmp_path / "run" / "config.yaml").unlink()
    with pytest.raises(SystemExit, match="config.yaml does not exist"):
        main(["demo", "--weights", str(weights), str(images / "c.jpg"), "--out", str(tmp_path / "o")])


def test_demo_names_a_missing_input(tmp_path, capsys):
    weights = save_tiny_checkpoint(tmp_path / "run", "retinanet")
    assert main(["demo", "--weights", str(weights), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.jpg: no such image file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["retinanet", "mask_rcnn"])
def test_predict_writes_coco_results_of_the_models_detections(images, tmp_path, arch):
    from pycocotools import mask as mask_utils

    weights = save_tiny_checkpoint(tmp_path / "run", arch)
    detector = Detector.from_checkpoint(weights)
    sources = [images / "folder" / "a.jpg", images / "folder" / "b.png", images / "c.jpg"]
    threshold = float(detector.predict(sources[0])["scores"].median())
    out = tmp_path / "dets.json"
    assert main(["predict", "--weights", str(weights), str(images / "folder"), str(images / "c.jpg"),
                 "--out", str(out), "--score-threshold", str(threshold)]) == 0
    records = json.loads(out.read_text())
    expected = 0
    for image_id, source in enumerate(sources, start=1):
        want = detector.predict(source)
        keep = torch.where(want["scores"] >= threshold)[0].tolist()
        assert 0 < len(keep) < len(want["scores"]) or image_id > 1  # the threshold kept some and dropped some
        got = [r for r in records if r["image_id"] == image_id]
        assert len(got) == len(keep) and all(r["file_name"] == str(source) for r in got)
        for r, k in zip(got, keep):
            x1, y1, x2, y2 = want["boxes"][k].tolist()
            assert r["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.006)
            assert r["score"] == pytest.approx(float(want["scores"][k]))
            assert r["category_id"] == int(want["labels"][k]) and r["category_name"] == CLASS_NAMES[r["category_id"] - 1]
            if arch == "mask_rcnn":
                assert torch.equal(torch.from_numpy(mask_utils.decode(r["segmentation"])).bool(), want["masks"][k])
            else:
                assert "segmentation" not in r
        expected += len(keep)
    assert len(records) == expected
