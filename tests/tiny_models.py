"""Tiny untrained detectors saved as training saves them (checkpoint + the run folder's config.yaml), for the demo,
API and export tests. Untrained but not silent: the classification bias stays at the config's prior (0.01) while
π is 1e-3, so scores (~0.01) pass the adaptive threshold (π·C = 0.003) and every model returns detections."""
from pathlib import Path

import torch

from sampling_free.config import load_config, save_config
from sampling_free.modeling import build_model

CLASS_NAMES = ["circle", "square", "triangle"]
COMMON = {"MODEL.BACKBONE.NAME": "resnet18", "MODEL.BACKBONE.WEIGHTS": "", "MODEL.FPN.OUT_CHANNELS": 32,
          "MODEL.SAMPLING_FREE_ON": True, "MODEL.SAMPLING_FREE.BIAS_INIT": False,
          "INPUT.MIN_SIZE_TEST": 96, "INPUT.MAX_SIZE_TEST": 128, "TEST.DETECTIONS_PER_IMG": 50}
RCNN = {"MODEL.FPN.MIN_LEVEL": 2, "MODEL.FPN.TOP_BLOCK": "maxpool", "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1,
        "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": 64, "MODEL.ROI_MASK_HEAD.CONV_LAYERS": [16, 16],
        "MODEL.RPN.PRE_NMS_TOP_N_TEST": 200, "MODEL.RPN.POST_NMS_TOP_N_TEST": 100}
ARCHS = {
    "retinanet": {"MODEL.META_ARCHITECTURE": "RetinaNet", "MODEL.RETINANET.NUM_CONVS": 1},
    "fcos": {"MODEL.META_ARCHITECTURE": "FCOS", "MODEL.FCOS.NUM_CONVS": 1, "MODEL.FPN.OUT_CHANNELS": 64,
             "MODEL.ANCHOR_GENERATOR.SIZES": [[8], [16], [32], [64], [128]],
             "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [1.0]},
    "faster_rcnn": {"MODEL.META_ARCHITECTURE": "GeneralizedRCNN", **RCNN},
    "mask_rcnn": {"MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.MASK_ON": True, **RCNN},
    "cascade_rcnn": {"MODEL.META_ARCHITECTURE": "CascadeRCNN", **RCNN},
    "ssd": {"MODEL.META_ARCHITECTURE": "SSD", "MODEL.BACKBONE.NAME": "mobilenet_v2", "MODEL.SSD.SIZE": 96,
            "MODEL.SSD.EXTRA_CHANNELS": [64, 32, 32, 16], "MODEL.SSD.MIN_RATIO": 0.1, "MODEL.SSD.MAX_RATIO": 0.9},
    "atss": {"MODEL.META_ARCHITECTURE": "ATSS", "MODEL.FCOS.NUM_CONVS": 1, "MODEL.FPN.OUT_CHANNELS": 64,
             "MODEL.ANCHOR_GENERATOR.SIZES": [[16], [32], [64], [128], [256]],
             "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [1.0]},
    "paa": {"MODEL.META_ARCHITECTURE": "PAA", "MODEL.FCOS.NUM_CONVS": 1, "MODEL.FPN.OUT_CHANNELS": 64,
            "MODEL.ANCHOR_GENERATOR.SIZES": [[16], [32], [64], [128], [256]],
            "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [1.0]},
}


def tiny_config(arch: str, **extra):
    return load_config(values={**COMMON, **ARCHS[arch], **extra})


def save_tiny_checkpoint(folder: Path, arch: str, **extra) -> Path:
    """``folder/model_final.pth`` and ``folder/config.yaml`` of an untrained ``arch`` with π = 1e-3."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(arch, **extra)
    torch.manual_seed(0)
    model = build_model(cfg, len(CLASS_NAMES))
    model.set_prior(1e-3)
    if arch == "ssd":  # SSDlite's untrained head scores every class 1/4: spread the scores, so that they rank
        with torch.no_grad():
            for block in model.head.classification_head.module_list:
                block[-1].bias.normal_(0.0, 1.0)
    save_config(cfg, folder / "config.yaml")
    path = folder / "model_final.pth"
    torch.save({"model": model.state_dict(), "num_classes": len(CLASS_NAMES), "class_names": CLASS_NAMES}, path)
    return path
