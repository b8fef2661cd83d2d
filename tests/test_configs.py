"""Every shipped config loads, validates and builds its model (backbone weights left out: no downloads)."""

import pytest

from sampling_free.cli import CONFIG_ROOT
from sampling_free.config import load_config
from sampling_free.modeling import build_model
from paths import REPO

CONFIGS = sorted(CONFIG_ROOT.rglob("*.yaml"))


def test_configs_ship_with_the_package():
    names = {str(p.relative_to(CONFIG_ROOT)) for p in CONFIGS}
    assert {"quickstart/retinanet_mobilenet_v2_shapes.yaml", "retinanet/retinanet_R_50_FPN_1x.yaml",
            "retinanet/retinanet_R_101_FPN_1x.yaml", "faster_rcnn/faster_rcnn_R_50_FPN_1x.yaml",
            "faster_rcnn/faster_rcnn_R_101_FPN_1x.yaml", "mask_rcnn/mask_rcnn_R_50_FPN_1x.yaml",
            "retinanet/retinanet_voc_R_50_FPN_0.2x.yaml", "faster_rcnn/faster_rcnn_voc_R_50_FPN_0.2x.yaml",
            "fcos/fcos_R_50_FPN_1x.yaml", "cascade_rcnn/cascade_rcnn_R_50_FPN_1x.yaml"} <= names
    assert (REPO / "configs").resolve() == CONFIG_ROOT  # the top-level folder is the packaged one


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_config_builds(path):
    cfg = load_config(path, values={"MODEL.BACKBONE.WEIGHTS": ""})
    model = build_model(cfg, 5)
    assert sum(p.numel() for p in model.parameters()) > 1e5


@pytest.mark.parametrize("name", ["retinanet", "fcos", "faster_rcnn", "mask_rcnn", "cascade_rcnn", "atss", "ssdlite"])
def test_every_family_keeps_the_one_detector_contract(name):
    """What the trainer, prior.json, the API and export use: modeling/contract.py's SamplingFreeDetector."""
    from sampling_free.modeling.contract import SamplingFreeDetector

    cfg = load_config(REPO / "configs" / "quickstart" / f"{name}_mobilenet_v2_shapes.yaml",
                      values={"MODEL.BACKBONE.WEIGHTS": ""})
    model = build_model(cfg, 6)
    assert isinstance(model, SamplingFreeDetector)
    model.set_prior(1e-3)
    report = model.describe_prior()
    assert report["prior"] == 1e-3 and report["score_threshold"] == pytest.approx(1e-4 if "rcnn" in name else 6e-3)
    assert model.prior_counter().num_classes == (1 if "rcnn" in name else 6)
