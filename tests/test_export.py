"""``sampling-free export``: the exported model against the eager model's own detections on the same inputs."""
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from sampling_free.api import Detector, load_image
from sampling_free.cli import main
from sampling_free.data import shapes
from sampling_free.export import BOX_TOL, SCORE_TOL, Exported, compare, export_and_check, resize_for_export
from tiny_models import CLASS_NAMES, save_tiny_checkpoint

SIZE = (96, 128)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "demo_and_export.md"


def shapes_images(split, count):
    return [load_image(shapes.render_image(0, split, k)[0]) for k in range(count)]


@pytest.mark.parametrize("arch, fmt", [("retinanet", "torchscript"), ("retinanet", "onnx"),
                                       ("faster_rcnn", "torchscript"), ("faster_rcnn", "onnx"),
                                       ("mask_rcnn", "onnx"), ("fcos", "torchscript"), ("ssd", "torchscript"),
                                       ("ssd", "onnx"), ("atss", "torchscript"), ("paa", "torchscript")])
def test_the_export_reproduces_the_eager_detections(tmp_path, arch, fmt):
    """RetinaNet and Faster R-CNN in both formats; Mask R-CNN in the format with its own mask pasting (ONNX's
    loop), FCOS once (``docs/demo_and_export.md`` has both formats of every detector on trained models)."""
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="pip install 'sampling-free[export]'")
        pytest.importorskip("onnxruntime", reason="pip install 'sampling-free[export]'")
    detector = Detector.from_checkpoint(save_tiny_checkpoint(tmp_path / "run", arch))
    out = tmp_path / f"model.{fmt}"
    info, reports = export_and_check(detector.model, fmt=fmt, out=out, image_size=SIZE,
                                     images=shapes_images("export", 2), class_names=detector.class_names)
    assert info["method"] in ("script", "trace") and info["class_names"] == CLASS_NAMES
    assert ("masks" in info["outputs"]) == (arch == "mask_rcnn")
    for r in reports:  # untrained scores are all weak: none may be excused as such
        assert r["ok"] and r["eager"] > 0 and r["weak"] == r["missing"] == 0, r
    # independently of compare(): a new image, the ten strongest detections side by side
    image = resize_for_export(shapes_images("fresh", 1)[0], SIZE)
    got = Exported(out)(image)
    with torch.no_grad():
        want = detector.model([image[0]])[0]
    a, b = torch.argsort(want["scores"], descending=True)[:10], torch.argsort(got["scores"], descending=True)[:10]
    if len(set(want["scores"][a].tolist())) < len(a):  # tied scores (the tiny SSD's) rank differently per runtime
        assert sorted(want["scores"][a].tolist()) == pytest.approx(sorted(got["scores"][b].tolist()), abs=SCORE_TOL)
        return
    assert want["labels"][a].tolist() == got["labels"][b].tolist()
    torch.testing.assert_close(got["boxes"][b], want["boxes"][a], atol=BOX_TOL, rtol=0)
    torch.testing.assert_close(got["scores"][b], want["scores"][a], atol=SCORE_TOL, rtol=0)
    if arch == "mask_rcnn":
        torch.testing.assert_close(got["masks"][b], want["masks"][a], atol=1e-3, rtol=0)


def test_cascade_exports_only_while_the_rpn_fills_its_proposals(tmp_path):
    images = shapes_images("export", 2)
    full = Detector.from_checkpoint(save_tiny_checkpoint(tmp_path / "full", "cascade_rcnn"))  # 100 of ~2000
    info, reports = export_and_check(full.model, fmt="torchscript", out=tmp_path / "full.pt", image_size=SIZE,
                                     images=images, class_names=CLASS_NAMES)
    assert "POST_NMS_TOP_N_TEST" in info["caveat"] and all(r["ok"] for r in reports)
    short = Detector.from_checkpoint(save_tiny_checkpoint(  # more than survive NMS: the count varies per image
        tmp_path / "short", "cascade_rcnn", **{"MODEL.RPN.PRE_NMS_TOP_N_TEST": 3000,
                                               "MODEL.RPN.POST_NMS_TOP_N_TEST": 3000}))
    _, reports = export_and_check(short.model, fmt="torchscript", out=tmp_path / "short.pt", image_size=SIZE,
                                  images=images, class_names=CLASS_NAMES)
    assert not all(r["ok"] for r in reports)


def _dets(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores)}


def test_compare_tells_moved_relabelled_and_missing_detections_from_numeric_noise():
    eager = _dets([[10, 10, 50, 50], [60, 10, 90, 40], [5, 60, 40, 90]], [1, 2, 3], [0.9, 0.6, 0.04])
    same = compare(eager, _dets([[60, 10, 90, 40.001], [10, 10, 50, 50], [5, 60, 40, 90]], [2, 1, 3],
                                [0.6, 0.90001, 0.04]))
    assert same["ok"] and same["matched"] == 3 and same["max_box_diff"] == pytest.approx(0.001, abs=1e-5)
    moved = compare(eager, _dets([[10, 10, 50.2, 50], [60, 10, 90, 40], [5, 60, 40, 90]], [1, 2, 3],
                                 [0.9, 0.6, 0.04]))
    assert not moved["ok"] and moved["max_box_diff"] == pytest.approx(0.2, abs=1e-5)
    relabelled = compare(eager, _dets([[10, 10, 50, 50], [60, 10, 90, 40], [5, 60, 40, 90]], [1, 3, 3],
                                      [0.9, 0.6, 0.04]))
    assert not relabelled["ok"] and relabelled["missing"] == 2  # the eager class-2 box and the exported class-3 one
    rescored = compare(eager, _dets(eager["boxes"].tolist(), [1, 2, 3], [0.9, 0.601, 0.04]))
    assert not rescored["ok"]
    weak_lost = compare(eager, _dets(eager["boxes"][:2].tolist(), [1, 2], [0.9, 0.6]))
    assert weak_lost["ok"] and weak_lost["weak"] == 1  # 0.04 < WEAK_SCORE: reported, tolerated
    strong_lost = compare(eager, _dets(eager["boxes"][1:].tolist(), [2, 3], [0.6, 0.04]))
    assert not strong_lost["ok"] and strong_lost["missing"] == 1
    cut = compare(_dets([[0, 0, 9, 9], [20, 20, 29, 29]], [1, 1], [0.5, 0.30000001]),  # a tie at the last place
                  _dets([[0, 0, 9, 9], [40, 40, 49, 49]], [1, 1], [0.5, 0.3]))
    assert cut["ok"] and cut["borderline"] == 2


@pytest.fixture(scope="module")
def check_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check")
    for k in range(2):
        shapes.render_image(0, "cli", k)[0].save(folder / f"{k}.jpg")
    return folder


def test_the_command_prints_the_agreement_and_writes_it_beside_the_export(tmp_path, check_folder, capsys):
    weights = save_tiny_checkpoint(tmp_path / "run", "retinanet")
    out = tmp_path / "retinanet.pt"
    assert main(["export", "--weights", str(weights), "--format", "torchscript", "--out", str(out),
                 "--image-size", "96", "128", "--check", str(check_folder)]) == 0
    printed = capsys.readouterr().out
    assert "traced: takes only 96x128 images" in printed and "agreement: 2/2 images within tolerance" in printed
    info = json.loads((tmp_path / "retinanet.pt.json").read_text())
    assert info["image_size"] == [96, 128] and info["agreement"]["ok"] == 2
    with pytest.raises(ValueError, match="the export takes 96x128 images, got 96x96"):
        Exported(out)(torch.rand(1, 3, 96, 96))


def test_onnx_without_onnxruntime_is_written_but_not_checked(tmp_path, check_folder, capsys, monkeypatch):
    pytest.importorskip("onnx", reason="pip install 'sampling-free[export]'")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    weights = save_tiny_checkpoint(tmp_path / "run", "retinanet")
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--check", str(check_folder / "0.jpg")]) == 0
    assert "onnxruntime is not installed: the ONNX file is written but NOT checked" in capsys.readouterr().out
    assert (tmp_path / "m.onnx").stat().st_size > 100_000


def test_onnx_without_onnx_says_what_to_install(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real_find_spec(name, *a))
    weights = save_tiny_checkpoint(tmp_path / "run", "retinanet")
    with pytest.raises(SystemExit, match=r"ONNX export needs the onnx package: pip install 'sampling-free\[export\]'"):
        main(["export", "--weights", str(weights), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert not (tmp_path / "m.onnx").exists()


def test_the_documented_use_of_an_export_runs(tmp_path, monkeypatch):
    """The ```python block of docs/demo_and_export.md, on exports of a tiny RetinaNet at the paths it names."""
    pytest.importorskip("onnxruntime", reason="pip install 'sampling-free[export]'")
    monkeypatch.chdir(tmp_path)
    shapes.write_dataset(tmp_path / "shapes", seed=0, splits={"val": 1})
    detector = Detector.from_checkpoint(save_tiny_checkpoint(tmp_path / "run", "retinanet"))
    image = load_image("shapes/val/000000.jpg")
    for fmt, out in [("onnx", "retinanet.onnx"), ("torchscript", "retinanet.pt")]:
        export_and_check(detector.model, fmt=fmt, out=out, image_size=SIZE, images=[image], class_names=CLASS_NAMES)
    (block,) = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    namespace = {}
    exec(compile(block, str(DOCS), "exec"), namespace)
    with torch.no_grad():  # the block ends with the TorchScript model's boxes, in the H x W input's pixels
        want = detector.model([resize_for_export(image, SIZE)[0]])[0]
    assert len(want["boxes"]) > 0 and torch.equal(namespace["boxes"], want["boxes"])


def test_the_format_follows_the_suffix_unless_given(tmp_path, check_folder, capsys):
    weights = save_tiny_checkpoint(tmp_path / "run", "retinanet")
    common = ["--weights", str(weights), "--image-size", "96", "128", "--check", str(check_folder / "0.jpg")]
    assert main(["export", *common, "--out", str(tmp_path / "m.ts")]) == 0
    assert "m.ts: SamplingFreeRetinaNet as torchscript" in capsys.readouterr().out
    assert main(["export", *common, "--out", str(tmp_path / "m.bin"), "--format", "torchscript"]) == 0
    with pytest.raises(SystemExit, match=r"cannot tell the format from .*m.bin'; name it .onnx, .pt or .ts"):
        main(["export", *common, "--out", str(tmp_path / "m.bin")])
    if importlib.util.find_spec("onnx") is not None:
        assert main(["export", *common, "--out", str(tmp_path / "m.onnx")]) == 0
        assert "m.onnx: SamplingFreeRetinaNet as onnx" in capsys.readouterr().out
