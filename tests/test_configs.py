"""Every shipped config loads, validates and builds its model (backbone weights left out: no downloads)."""

import pytest

from sampling_free.config import CONFIG_ROOT
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


@pytest.mark.parametrize("name", ["retinanet", "fcos", "faster_rcnn", "mask_rcnn", "cascade_rcnn", "atss", "ssdlite",
                                  "paa"])
def test_every_family_keeps_the_one_detector_contract(name):
    """What the trainer, prior.json, the API and export use: modeling/contract.py's SamplingFreeDetector."""
    from sampling_free.modeling.contract import PriorDescription, SamplingFreeDetector, TestThresholds

    cfg = load_config(REPO / "configs" / "quickstart" / f"{name}_mobilenet_v2_shapes.yaml",
                      values={"MODEL.BACKBONE.WEIGHTS": ""})
    model = build_model(cfg, 6)
    assert isinstance(model, SamplingFreeDetector)
    model.set_prior(1e-3)
    report = model.describe_prior()
    assert report["prior"] == 1e-3 and report["score_threshold"] == pytest.approx(1e-4 if "rcnn" in name else 6e-3)
    assert model.prior_counter().num_classes == (1 if "rcnn" in name else 6)
    # the same description for every family, and everything the engine, export and the benchmarks read declared
    assert set(report) == set(PriorDescription.__annotations__)
    assert report["bias"] is not None and isinstance(report["nms_threshold"], float)
    assert model.has_masks == (name == "mask_rcnn") and (model.export_caveat is None) == (name != "cascade_rcnn")
    assert callable(model.transform.resize)
    # one way to read and to set the test thresholds: sampling-free's follow π, setting changes the baseline's
    free = model.test_thresholds()
    assert isinstance(free, TestThresholds) and free.score == pytest.approx(report["score_threshold"])
    model.set_test_thresholds(score=0.3, nms=0.4)
    assert model.test_thresholds().score == pytest.approx(free.score)  # still π's: adaptive is on
    baseline = build_model(load_config(REPO / "configs" / "quickstart" / f"{name}_mobilenet_v2_shapes.yaml",
                                       values={"MODEL.BACKBONE.WEIGHTS": "", "MODEL.SAMPLING_FREE_ON": False}), 6)
    baseline.set_test_thresholds(score=0.3, nms=0.4)
    assert baseline.test_thresholds() == (0.3, 0.4)
    exported = model.exportable()
    assert exported is not model and not exported.training and model.training
