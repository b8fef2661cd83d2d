"""Initialising from a whole-detector checkpoint: ours (same or another number of classes) and torchvision's."""

import pytest
import torch
from torchvision.models.detection import retinanet_resnet50_fpn

from sampling_free.cli import main
from sampling_free.config import load_config
from sampling_free.checkpoint import load_checkpoint
from sampling_free.checkpoint import load_fitting
from sampling_free.modeling import build_model
from paths import CONFIGS


def _args(opts):
    return [x for k, v in opts.items() for x in (k, v if isinstance(v, str) else repr(v))]


@pytest.fixture(scope="module")
def pretrained(tiny_dataset_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained")
    opts = {**tiny_dataset_overrides, "SOLVER.MAX_ITER": 2, "OUTPUT_DIR": str(out)}
    assert main(["train", "--skip-test", *_args(opts)]) == 0
    return out / "model_final.pth"


def test_finetuning_starts_from_the_given_weights(pretrained, tiny_dataset_overrides, tmp_path):
    # learning rate 0 and one step: what the run saves is what it started from
    opts = {**tiny_dataset_overrides, "SOLVER.MAX_ITER": 1, "SOLVER.BASE_LR": 0.0, "MODEL.WEIGHT": str(pretrained),
            "OUTPUT_DIR": str(tmp_path), "MODEL.SAMPLING_FREE_ON": True}
    assert main(["train", "--skip-test", *_args(opts)]) == 0
    before, after = load_checkpoint(pretrained)["model"], load_checkpoint(tmp_path / "model_final.pth")["model"]
    for key, value in before.items():
        if key.startswith("prior.") or "running_" in key or "num_batches" in key:
            continue  # the run keeps the prior of its own data; BatchNorm statistics move even at LR 0
        assert torch.equal(after[key], value), key
    assert "initialised" in (tmp_path / "log.txt").read_text()


def test_other_number_of_classes_reinitialises_the_classifier(pretrained, tiny_dataset_overrides, caplog):
    cfg = load_config(values={**tiny_dataset_overrides})
    model = build_model(cfg, 3)  # the checkpoint has 6 classes
    fresh = model.head.classification_head.cls_logits.weight.clone()
    report = load_fitting(model, pretrained)
    assert report["reinitialised"] == ["head.classification_head.cls_logits.bias",
                                       "head.classification_head.cls_logits.weight"]
    assert torch.equal(model.head.classification_head.cls_logits.weight, fresh)
    state = load_checkpoint(pretrained)["model"]
    assert torch.equal(model.backbone.body.conv1.weight, state["backbone.body.conv1.weight"])
    assert "reinitialised (2)" in caplog.text


def test_torchvision_detector_weights_fit_our_retinanet(tmp_path):
    reference = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(reference.state_dict(), tmp_path / "retinanet_coco.pth")
    cfg = load_config(str(CONFIGS / "retinanet/retinanet_R_50_FPN_1x.yaml"), values={"MODEL.BACKBONE.WEIGHTS": ""})
    model = build_model(cfg, 80)
    report = load_fitting(model, tmp_path / "retinanet_coco.pth")
    # everything but the 91-way classifier (ours: 80 foreground classes) and P6 comes from the file: torchvision
    # computes P6 from P5 (256 channels), the original RetinaNet (and our config) from C5 (2048)
    assert report["reinitialised"] == ["backbone.fpn.extra_blocks.p6.weight",
                                       "head.classification_head.cls_logits.bias",
                                       "head.classification_head.cls_logits.weight"]
    assert report["unexpected"] == [] and report["loaded"] > 200
    assert torch.equal(model.head.regression_head.bbox_reg.weight, reference.head.regression_head.bbox_reg.weight)
    assert torch.equal(model.backbone.fpn.layer_blocks[0][0].weight, reference.backbone.fpn.layer_blocks[0][0].weight)


def test_a_file_that_fits_nothing_is_refused(tmp_path, tiny_dataset_overrides):
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pth")
    model = build_model(load_config(values={**tiny_dataset_overrides}), 6)
    with pytest.raises(ValueError, match="no tensor in it fits this SamplingFreeRetinaNet"):
        load_fitting(model, tmp_path / "other.pth")
