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
