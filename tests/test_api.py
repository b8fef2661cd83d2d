"""The Python API: every input kind gives the model's own detections, and the examples in docs/python_api.md run."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

import sampling_free
from sampling_free import Detector
from sampling_free.data import shapes
from tiny_models import CLASS_NAMES, save_tiny_checkpoint, tiny_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "python_api.md"


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "a.jpg"
    shapes.render_image(0, "api", 0)[0].save(path)
    return path


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("retinanet"), "retinanet")


def test_every_input_kind_gives_the_models_own_detections(retinanet, image_file):
    detector = Detector.from_checkpoint(retinanet)
    pil = Image.open(image_file)
    as_uint8 = pil_to_tensor(pil.convert("RGB"))
    results = detector.predict([str(image_file), image_file, pil, as_uint8, as_uint8.float() / 255])
    with torch.no_grad():
        expected = detector.model([as_uint8.float() / 255])[0]
    assert len(expected["boxes"]) > 0
    for r in results:
        assert torch.equal(r["boxes"], expected["boxes"]) and torch.equal(r["scores"], expected["scores"])
        assert torch.equal(r["labels"], expected["labels"])
        assert r["class_names"] == [CLASS_NAMES[k - 1] for k in expected["labels"].tolist()]
        assert "masks" not in r
    single = detector.predict(as_uint8)  # one image in, one dict out
    assert isinstance(single, dict) and torch.equal(single["boxes"], expected["boxes"])


def test_masks_are_image_sized_booleans(tmp_path):
    detector = Detector.from_checkpoint(save_tiny_checkpoint(tmp_path, "mask_rcnn"))
    image = torch.rand(3, 90, 120)
    result = detector.predict(image)
    with torch.no_grad():
        expected = detector.model([image])[0]["masks"][:, 0] > 0.5
    assert result["masks"].dtype == torch.bool and result["masks"].shape == (len(result["boxes"]), 90, 120)
    assert torch.equal(result["masks"], expected) and result["masks"].any()


def test_bad_inputs_say_what_is_wrong(retinanet, tmp_path):
    detector = Detector.from_checkpoint(retinanet)
    with pytest.raises(FileNotFoundError, match="missing.jpg: image file not found"):
        detector.predict(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match=r"image 1: expected a CHW tensor with 3 \(RGB\) channels, got shape \(1, "):
        detector.predict([torch.rand(3, 64, 64), torch.rand(1, 64, 64)])
    with pytest.raises(ValueError, match="pass a batch as a list"):
        detector.predict(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"scaled to \[0, 1\].*divide 0-255 values by 255"):
        detector.predict(torch.rand(3, 64, 64) * 255)
    (tmp_path / "not_an_image.jpg").write_text("hello")
    with pytest.raises(ValueError, match="not_an_image.jpg: cannot read image"):
        detector.predict(tmp_path / "not_an_image.jpg")


def test_from_config_with_the_weights_is_the_checkpoints_model(retinanet, image_file):
    a = Detector.from_checkpoint(retinanet).predict(image_file)
    b = Detector.from_config(retinanet.parent / "config.yaml", num_classes=3, weights=retinanet).predict(image_file)
    assert torch.equal(a["boxes"], b["boxes"]) and a["class_names"] == b["class_names"]
    with pytest.raises(ValueError, match="the checkpoint has 3 classes, not 5"):
        Detector.from_config(retinanet.parent / "config.yaml", num_classes=5, weights=retinanet)


def test_a_checkpoint_without_its_config_is_a_clear_error(retinanet, tmp_path):
    lone = tmp_path / "model.pth"
    lone.write_bytes(retinanet.read_bytes())
    with pytest.raises(FileNotFoundError, match="config.yaml: not found; pass config="):
        Detector.from_checkpoint(lone)
    assert Detector.from_checkpoint(lone, config=tiny_config("retinanet")).class_names == CLASS_NAMES


def test_importing_the_package_does_not_import_torch():
    code = "import sys, sampling_free; assert 'torch' not in sys.modules; sampling_free.Detector; " \
           "assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_dash_m_is_the_command():
    """``python -m sampling_free`` for environments without the console script (e.g. a source tree on PYTHONPATH)."""
    done = subprocess.run([sys.executable, "-m", "sampling_free", "prior", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: sampling-free prior" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "sampling_free", "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_the_documented_examples_run(tiny_dataset_overrides, tmp_path, monkeypatch):
    """Every ```python block of docs/python_api.md, in order, in one namespace, from a folder holding the built-in
    dataset as ``sampling-free data shapes --out shapes`` writes it. Training uses the tiny dataset and model."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    shapes.write_dataset(tmp_path / "shapes", seed=0, splits={"val": 2})
    real_train = sampling_free.api.train
    tiny = {**tiny_dataset_overrides, "SOLVER.MAX_ITER": 2}

    def tiny_train(config_file=None, *, overrides=None, **kwargs):
        return real_train(config_file, overrides={**(overrides or {}), **tiny}, **kwargs)

    monkeypatch.setattr(sampling_free, "train", tiny_train)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
    assert (tmp_path / "output" / "api_quickstart" / "model_final.pth").is_file()
    assert len(namespace["detector"].predict("shapes/val/000000.jpg")["boxes"]) <= 10
