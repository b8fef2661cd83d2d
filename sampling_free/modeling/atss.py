"""ATSS (adaptive training sample selection), baseline or sampling-free.

ATSS is FCOS's head (classification, box, centerness towers) and losses (focal loss, GIoU, centerness BCE) on one
square anchor per location, with its own assignment: for each object, the ``k`` anchors per pyramid level whose
centres are nearest its centre are candidates; those whose IoU with it reaches the mean + standard deviation of
the candidates' IoUs, and whose centre lies inside it, are its positives (an anchor claimed twice goes to the
higher IoU). Boxes are anchor deltas (box coder 10, 10, 5, 5), decoded for the GIoU loss.

Sampling-free changes ATSS exactly where it changes FCOS, in ``fcos.py``'s ``SamplingFreeFCOS``, which this file
only configures: focal loss -> BCE over every location, guided to the GIoU loss; bias from π counted with
``atss_assign`` (the loss's own assignment); test threshold π · C on the classification probability. The
assignment is kept.
"""
from __future__ import annotations

import torch
from torchvision.models.detection.fcos import FCOSHead, FCOSRegressionHead
from torchvision.ops import box_iou

from . import torchvision_internals as tv
from .backbone import backbone_from_config
from .common import build_anchor_generator, build_transform, resolve_switches
from .fcos import SamplingFreeFCOS


def atss_assign(anchors: torch.Tensor, boxes: torch.Tensor, num_per_level: list[int], topk: float) -> torch.Tensor:
    """Index of the box each anchor is assigned to, -1 for background (ATSS's rule, see module doc)."""
    if boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    iou = box_iou(anchors, boxes)  # (A, G)
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    distance = torch.cdist(centers, (boxes[:, :2] + boxes[:, 2:]) / 2)  # (A, G)
    candidates, start = [], 0
    for count in num_per_level:
        nearest = distance[start:start + count].topk(min(int(topk), count), dim=0, largest=False).indices
        candidates.append(nearest + start)
        start += count
    candidates = torch.cat(candidates)  # (K, G): anchor indices
    candidate_iou = iou.gather(0, candidates)
    threshold = candidate_iou.mean(0) + candidate_iou.std(0)
    cx, cy = centers[candidates, 0], centers[candidates, 1]
    inside = (cx > boxes[:, 0]) & (cy > boxes[:, 1]) & (cx < boxes[:, 2]) & (cy < boxes[:, 3])
    positive = (candidate_iou >= threshold) & inside
    claims = torch.full_like(iou, -1.0)
    box_index = torch.arange(boxes.shape[0], device=boxes.device).expand_as(candidates)
    claims[candidates[positive], box_index[positive]] = candidate_iou[positive]
    best, index = claims.max(dim=1)
    index[best < 0] = -1
    return index


def _per_location(output: torch.Tensor, size: int) -> torch.Tensor:
    """(N, A * size, H, W) -> (N, H * W * A, size), torchvision's layout."""
    n, _, h, w = output.shape
    return output.view(n, -1, size, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, size)


class ATSSRegressionHead(FCOSRegressionHead):
    """FCOS's box and centerness branch without the ReLU on the box output: FCOS predicts distances (>= 0), ATSS
    anchor deltas, negative whenever a box lies left of or above its anchor's centre or is smaller than it."""

    def forward(self, x: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, centerness = [], []
        for features in x:
            feature = self.conv(features)
            boxes.append(_per_location(self.bbox_reg(feature), 4))
            centerness.append(_per_location(self.bbox_ctrness(feature), 1))
        return torch.cat(boxes, dim=1), torch.cat(centerness, dim=1)


def atss_head(in_channels: int, num_classes: int, num_convs: int) -> FCOSHead:
    head = FCOSHead(in_channels, 1, num_classes, num_convs=num_convs)
    head.regression_head = ATSSRegressionHead(in_channels, 1, num_convs=num_convs)
    return head


def one_anchor_parts(cfg, num_classes: int) -> dict:
    """What ATSS and PAA build alike, as ``SamplingFreeFCOS`` keyword arguments: MODEL.FCOS's head (box branch
    without ReLU) and focal loss, one anchor per location (MODEL.ANCHOR_GENERATOR: 8 x stride, ratio 1 in both
    papers), anchor deltas with box coder (10, 10, 5, 5)."""
    c = cfg.MODEL.FCOS
    backbone = backbone_from_config(cfg)
    anchor_generator = build_anchor_generator(cfg, len(backbone.level_strides))
    if anchor_generator.num_anchors_per_location()[0] != 1:
        raise ValueError(f"{cfg.MODEL.META_ARCHITECTURE} places one anchor per location: set "
                         "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE 1 and ASPECT_RATIOS [1.0]")
    return dict(backbone=backbone, head=atss_head(backbone.out_channels, num_classes, c.NUM_CONVS),
                anchor_generator=anchor_generator, transform=build_transform(cfg),
                switches=resolve_switches(cfg, default_scale=1.0), score_thresh=c.SCORE_THRESH,
                nms_thresh=c.NMS_THRESH, detections_per_img=cfg.TEST.DETECTIONS_PER_IMG,
                topk_candidates=c.TOPK_CANDIDATES, focal_alpha=c.FOCAL_LOSS_ALPHA, focal_gamma=c.FOCAL_LOSS_GAMMA,
                threshold_on=c.THRESHOLD_ON, box_coder=tv.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)))


def build_atss(cfg, num_classes: int) -> SamplingFreeFCOS:
    """ATSS from our config: ``one_anchor_parts`` with the assignment's k of MODEL.ATSS.TOPK."""
    model = SamplingFreeFCOS(**one_anchor_parts(cfg, num_classes), guided_target=cfg.MODEL.FCOS.GUIDED_TARGET,
                             assign=atss_assign, assign_parameter=cfg.MODEL.ATSS.TOPK)
    model.set_classification_prior(cfg.MODEL.FCOS.PRIOR_PROB)
    return model
