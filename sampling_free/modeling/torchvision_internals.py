"""Every private torchvision name the package uses, and nowhere else: a torchvision upgrade is this file's work.

Written against torchvision 0.29.1. ``tests/test_torchvision_internals.py`` checks each name on every test run and
says which one moved, so an upgrade fails there, with the name, instead of somewhere in a training step.
Public torchvision (models, ops, transforms) is imported where it is used.
"""
from __future__ import annotations

import torch
from torchvision.models.detection import _utils as _det_utils
from torchvision.models.detection.ssdlite import _extra_block
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

# detection/_utils.py: the pieces every torchvision detector is built from (public classes in a private module)
BoxCoder = _det_utils.BoxCoder
Matcher = _det_utils.Matcher
BalancedPositiveNegativeSampler = _det_utils.BalancedPositiveNegativeSampler
topk_min = _det_utils._topk_min  # min(k, number of candidates), traceable
box_loss = _det_utils._box_loss  # RetinaNet's / FCOS's box loss by type: l1, smooth_l1, ciou, diou, giou

# ops/poolers.py: what MultiScaleRoIAlign does before and after roi_align (modeling/roi_align.py reuses it)
filter_input = _filter_input
setup_scales = _setup_scales
convert_to_roi_format = _convert_to_roi_format

# models/detection/ssdlite.py: SSDlite's stride-2 extra feature block
ssdlite_extra_block = _extra_block


def roi_align_backward(*args):
    """The registered op behind ``roi_align``'s backward (called directly by the parallel RoIAlign)."""
    return torch.ops.torchvision._roi_align_backward(*args)


def rpn_top_n(rpn) -> tuple[dict, dict]:
    """(pre-NMS, post-NMS) proposal counts of a torchvision ``RegionProposalNetwork``, {"training", "testing"}."""
    return dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n)


def regression_loss_type(regression_head) -> str:
    """The box loss a torchvision ``RetinaNetRegressionHead`` trains with (``smooth_l1``, ``l1``, ``giou``...)."""
    return regression_head._loss_type
