"""Detectors: torchvision models with thin, explicit sampling-free adapters (one file per family)."""
from __future__ import annotations

from torch import nn

from .atss import build_atss
from .common import Switches, resolve_switches
from .cascade import CascadeRoIHeads, build_cascade_rcnn
from .fcos import SamplingFreeFCOS, build_fcos
from .rcnn import SamplingFreeRCNN, build_rcnn
from .retinanet import SamplingFreeRetinaNet, build_retinanet
from .ssd import SamplingFreeSSD, build_ssd

__all__ = ["build_model", "CascadeRoIHeads", "SamplingFreeFCOS", "SamplingFreeRCNN", "SamplingFreeRetinaNet", "SamplingFreeSSD", "Switches",
           "resolve_switches"]


def build_model(cfg, num_classes: int) -> nn.Module:
    """The detector named by ``MODEL.META_ARCHITECTURE``, randomly initialised apart from backbone weights."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if cfg.MODEL.SAMPLING_FREE.IOU_TARGET and arch != "RetinaNet":
        raise ValueError(f"MODEL.SAMPLING_FREE.IOU_TARGET is implemented for RetinaNet only, not {arch}")
    if arch == "RetinaNet":
        return build_retinanet(cfg, num_classes)
    if arch == "FCOS":
        return build_fcos(cfg, num_classes)
    if arch == "CascadeRCNN":
        return build_cascade_rcnn(cfg, num_classes)
    if arch == "GeneralizedRCNN":
        return build_rcnn(cfg, num_classes)
    if arch == "SSD":
        return build_ssd(cfg, num_classes)
    if arch == "ATSS":
        return build_atss(cfg, num_classes)
    raise ValueError(f"MODEL.META_ARCHITECTURE={arch!r} is not implemented")
