"""Detectors: torchvision models with thin, explicit sampling-free adapters (one file per family)."""
from __future__ import annotations

from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.ssd import SSD

from .atss import build_atss
from .backbone import build_backbone
from .common import Switches, build_anchor_generator, inside_image, resolve_switches
from .cascade import CascadeRoIHeads, build_cascade_rcnn
from .contract import is_sampling_free
from .fcos import SamplingFreeFCOS, build_fcos
from .paa import build_paa
from .rcnn import SamplingFreeRCNN, build_rcnn
from .retinanet import SamplingFreeRetinaNet, build_retinanet
from .ssd import SamplingFreeSSD, build_ssd
from . import fcos, rcnn, retinanet, ssd

__all__ = ["build_model", "from_torchvision", "SUPPORTED", "build_backbone", "build_anchor_generator", "inside_image",
           "CascadeRoIHeads", "SamplingFreeFCOS", "SamplingFreeRCNN", "SamplingFreeRetinaNet", "SamplingFreeSSD",
           "Switches", "resolve_switches"]


# MODEL.META_ARCHITECTURE -> the family's builder (a plain table, written here and nowhere else)
BUILDERS = {"RetinaNet": build_retinanet, "FCOS": build_fcos, "ATSS": build_atss, "SSD": build_ssd,
            "GeneralizedRCNN": build_rcnn, "CascadeRCNN": build_cascade_rcnn, "PAA": build_paa}


def build_model(cfg, num_classes: int) -> nn.Module:
    """The detector named by ``MODEL.META_ARCHITECTURE``, randomly initialised apart from backbone weights."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if cfg.MODEL.SAMPLING_FREE.IOU_TARGET and arch != "RetinaNet":
        raise ValueError(f"MODEL.SAMPLING_FREE.IOU_TARGET is implemented for RetinaNet only, not {arch}")
    if cfg.MODEL.ROI_HEADS.SAMPLER == "ohem" and arch not in ("GeneralizedRCNN", "CascadeRCNN"):
        raise ValueError(f"MODEL.ROI_HEADS.SAMPLER ohem samples an R-CNN's RoIs; {arch} has none (its heuristic is "
                         "its loss or its mining)")
    if arch not in BUILDERS:
        raise ValueError(f"MODEL.META_ARCHITECTURE={arch!r} is not implemented")
    return BUILDERS[arch](cfg, num_classes)


SUPPORTED = ("torchvision.models.detection.RetinaNet (retinanet_resnet50_fpn, _v2)", "FCOS (fcos_resnet50_fpn)",
             "FasterRCNN (fasterrcnn_resnet50_fpn, _v2, fasterrcnn_mobilenet_v3_large_fpn, _320_fpn)",
             "MaskRCNN (maskrcnn_resnet50_fpn, _v2)", "SSD (ssd300_vgg16, ssdlite320_mobilenet_v3_large)")


def from_torchvision(model: nn.Module, switches: Switches) -> nn.Module:
    """A stock torchvision detector as the sampling-free family it belongs to, on its own modules and weights."""
    if is_sampling_free(model):
        raise TypeError(f"{type(model).__name__} is already sampling-free; convert the stock torchvision model")
    if isinstance(model, RetinaNet):
        return retinanet.from_torchvision(model, switches)
    if isinstance(model, FCOS):
        return fcos.from_torchvision(model, switches)
    if isinstance(model, SSD):
        return ssd.from_torchvision(model, switches)
    if isinstance(model, GeneralizedRCNN) and type(model.roi_heads) is RoIHeads and \
            getattr(model.roi_heads, "keypoint_predictor", None) is None:
        return rcnn.from_torchvision(model, switches)
    raise TypeError(f"convert() does not know {type(model).__name__}; it converts stock torchvision detectors: "
                    + "; ".join(SUPPORTED))
