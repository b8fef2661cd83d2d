"""FCOS (anchor-free), baseline or sampling-free: everything sampling-free changes in FCOS is in this file.

torchvision's ``FCOS`` provides backbone, head (classification, box, centerness) and decoding. FCOS has no sampler
to remove; its heuristic is the focal loss. Sampling-free FCOS:

* classification: plain sigmoid BCE over every location (FCOS has no ignore band) instead of focal loss;
* bias: π = share of foreground locations per class under FCOS's *own* assignment (a location is foreground when
  it lies inside a box, within ``CENTER_SAMPLING_RADIUS`` strides of its centre, and the box's regression distance
  falls in the level's scale range; ties go to the smallest box) -- ``fcos_assign`` serves both the loss and the
  prior count, so the two cannot drift apart;
* guided scaling of the classification loss against the regression side, chosen by ``MODEL.FCOS.GUIDED_TARGET``:
  the GIoU loss alone, or GIoU + centerness;
* test threshold π · C on the classification probability (baseline 0.05, as in the FCOS paper); detections are
  ranked by sqrt(classification x centerness) either way, so the centerness branch re-orders detections but never
  decides which pass the prior's threshold (the original author's FCOS issue #1).

Losses are normalised as torchvision's FCOS: each summed and divided by max(1, #foreground locations) (averaged over
processes). ``from_torchvision`` converts a stock torchvision ``FCOS`` on its own modules: column = label (its
column 0 is background), torchvision's loss names, and -- with the adaptive threshold off -- its threshold on the
combined score, so that with every switch off it is the stock model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.fcos import FCOS, FCOSHead
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from . import torchvision_internals as tv
from ..distributed import average_count
from .backbone import backbone_from_config
from .common import PriorBuffer, Switches, build_anchor_generator, build_transform, frozen_ratio, guided, \
    loss_weights, resolve_switches, weigh
from .one_stage import OneStagePrior, select_detections
from .prior_rules import AssignmentPriorCounter

# loss names: ours, and torchvision's (a converted model keeps its contract)
LOSS_NAMES = {"original": ("loss_fcos_cls", "loss_fcos_giou", "loss_fcos_centerness"),
              "torchvision": ("classification", "bbox_regression", "bbox_ctrness")}


def fcos_assign(anchors: torch.Tensor, boxes: torch.Tensor, num_per_level: list[int], radius: float) -> torch.Tensor:
    """Index of the box each location is responsible for, -1 for background (torchvision's FCOS rule).

    ``anchors`` are the stride-sized squares torchvision places at each location."""
    if boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    sizes = anchors[:, 2] - anchors[:, 0]
    box_centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    match = (centers[:, None, :] - box_centers[None]).abs().max(dim=2).values < radius * sizes[:, None]
    x, y = centers[:, 0:1], centers[:, 1:2]
    dist = torch.stack([x - boxes[None, :, 0], y - boxes[None, :, 1], boxes[None, :, 2] - x, boxes[None, :, 3] - y],
                       dim=2)
    match &= dist.min(dim=2).values > 0
    lower, upper = sizes * 4, sizes * 8
    lower[: num_per_level[0]] = 0
    upper[-num_per_level[-1]:] = float("inf")
    reach = dist.max(dim=2).values
    match &= (reach > lower[:, None]) & (reach < upper[:, None])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    score = match.float() * (1e8 - areas[None])
    best, index = score.max(dim=1)
    index[best < 1e-5] = -1
    return index


def centerness_target(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) · min(t, b) / max(t, b)) of each location's centre inside its box."""
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    lr = torch.stack([centers[:, 0] - boxes[:, 0], boxes[:, 2] - centers[:, 0]], 1)
    tb = torch.stack([centers[:, 1] - boxes[:, 1], boxes[:, 3] - centers[:, 1]], 1)
    return torch.sqrt(lr.min(1).values / lr.max(1).values * (tb.min(1).values / tb.max(1).values))


class SamplingFreeFCOS(OneStagePrior, FCOS):
    """torchvision ``FCOS`` from its parts, with the loss, bias and threshold above. ``label_offset``: 1 when column
    k is class k + 1 (our configs), 0 when column k is label k (torchvision's). ``assign`` and ``box_coder``: FCOS's
    by default; ATSS passes its own (``atss.py``). ``threshold_on``: what the baseline
    threshold applies to, the "classification" probability (the FCOS paper, our configs) or the "combined"
    sqrt(classification x centerness) (torchvision); the adaptive threshold always applies to the classification
    probability."""

    def __init__(self, backbone, *, head: FCOSHead, anchor_generator, transform, switches: Switches,
                 label_offset: int = 1, center_sampling_radius: float = 1.5, score_thresh: float = 0.05,
                 nms_thresh: float = 0.6, detections_per_img: int = 100, topk_candidates: int = 1000,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, guided_target: str = "giou",
                 threshold_on: str = "classification", loss_style: str = "original", assign=fcos_assign,
                 assign_parameter: float | None = None, box_coder=None):
        super().__init__(backbone, head.classification_head.num_classes, anchor_generator=anchor_generator,
                         head=head, center_sampling_radius=center_sampling_radius, score_thresh=score_thresh,
                         nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                         topk_candidates=topk_candidates)
        self.transform, self.switches, self.label_offset = transform, switches, label_offset
        self.assign = assign  # (anchors, boxes, per level, parameter) -> matched box per location, -1 background
        self.assign_parameter = center_sampling_radius if assign_parameter is None else assign_parameter
        if box_coder is not None:
            self.box_coder = box_coder
        self.prior = PriorBuffer()
        self.class_prior = PriorBuffer(self.num_classes) if switches.per_class_prior else None
        self.focal_alpha, self.focal_gamma, self.guided_target = focal_alpha, focal_gamma, guided_target
        self.threshold_on, self.loss_names = threshold_on, LOSS_NAMES[loss_style]
        self.last_stats: dict[str, float] = {}
        self.frozen_ratio = frozen_ratio(switches)
        self.loss_weights = loss_weights(switches, self.loss_names)

    @property
    def training_stats(self) -> dict[str, float]:
        return self.last_stats

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes (L, 4) from one image's deltas at its locations: FCOS's distances, or ATSS's anchor deltas."""
        if isinstance(self.box_coder, tv.BoxCoder):
            return self.box_coder.decode_single(deltas, anchors)
        return self.box_coder.decode(deltas, anchors)

    def prior_counter(self) -> AssignmentPriorCounter:
        return AssignmentPriorCounter(backbone=self.backbone, anchor_generator=self.anchor_generator,
                                      num_classes=self.num_classes, assign=self.assign,
                                      parameter=self.assign_parameter, rule=self.assign.__name__)

    @property
    def adaptive_nms_thresh(self) -> float:
        """FCOS keeps its NMS IoU with the adaptive threshold (the original changed only RetinaNet's)."""
        return self.nms_thresh

    def compute_loss(self, targets, head_outputs, anchors, num_anchors_per_level):
        cls_logits, deltas, ctrness = (head_outputs[k] for k in ("cls_logits", "bbox_regression", "bbox_ctrness"))
        matched = torch.stack([self.assign(a, t["boxes"], num_anchors_per_level, self.assign_parameter)
                               for a, t in zip(anchors, targets)])
        fg, num_fg, cls_targets, gt_boxes = self.targets_of(matched, targets, cls_logits)
        if self.switches.no_heuristic:
            loss_cls = F.binary_cross_entropy_with_logits(cls_logits, cls_targets, reduction="sum") / num_fg
        else:
            loss_cls = sigmoid_focal_loss(cls_logits, cls_targets, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                          reduction="sum") / num_fg
        anchors = torch.stack(anchors)
        if fg.any():
            pred = torch.stack([self.decode(d, a) for d, a in zip(deltas, anchors)])
            loss_giou = generalized_box_iou_loss(pred[fg], gt_boxes[fg], reduction="sum") / num_fg
            ctr_target = centerness_target(anchors[fg], gt_boxes[fg])
            loss_ctr = F.binary_cross_entropy_with_logits(ctrness.squeeze(2)[fg], ctr_target, reduction="sum") / num_fg
        else:  # zero, connected to the graph
            loss_giou, loss_ctr = deltas.sum() * 0.0, ctrness.sum() * 0.0
        self.last_stats = {"num_pos": float(fg.sum()), "cls_unscaled": float(loss_cls.detach())}
        if self.switches.guided_loss:
            with_ctr = self.guided_target == "giou_centerness"
            reference, box_outputs = (loss_giou + loss_ctr, (deltas, ctrness)) if with_ctr else (loss_giou, deltas)
            loss_cls = guided(self.switches, loss_cls, reference, self.switches.classification_scale,
                              self.frozen_ratio, outputs=(cls_logits, box_outputs))
        return weigh(self.loss_weights, dict(zip(self.loss_names, (loss_cls, loss_giou, loss_ctr))))

    def targets_of(self, matched, targets, cls_logits):
        """From each location's object (-1: background): the foreground mask, its count (averaged over processes, at
        least 1), the one-hot classification targets and each location's object box (zeros for background)."""
        fg = matched >= 0
        cls_targets = torch.zeros_like(cls_logits)
        gt_boxes = cls_logits.new_zeros(*matched.shape, 4)
        for i, t in enumerate(targets):
            k = fg[i].nonzero().squeeze(1)
            cls_targets[i, k, t["labels"][matched[i, k]] - self.label_offset] = 1.0
            gt_boxes[i, k] = t["boxes"][matched[i, k]]
        return fg, average_count(int(fg.sum())), cls_targets, gt_boxes

    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        """Keep (location, class) pairs whose classification probability (or, torchvision's baseline, combined
        score) passes the threshold; rank and NMS them by sqrt(classification x centerness)."""
        thresh, nms = self.test_thresholds()
        on_combined = self.threshold_on == "combined" and not self.switches.adaptive_threshold
        detections = []
        for index, image_shape in enumerate(image_shapes):
            levels = []
            for deltas, logits, ctr, level_anchors in zip(head_outputs["bbox_regression"], head_outputs["cls_logits"],
                                                          head_outputs["bbox_ctrness"], anchors[index]):
                probs = torch.sigmoid(logits[index])
                combined = torch.sqrt(probs * torch.sigmoid(ctr[index]))
                levels.append((deltas[index], combined if on_combined else probs, combined, level_anchors))
            detections.append(select_detections(
                levels, thresh=self.column_thresholds(thresh, levels[0][1]), topk=self.topk_candidates,
                nms_thresh=nms, detections_per_img=self.detections_per_img, decode=self.decode,
                image_shape=image_shape, label_offset=self.label_offset))
        return detections


def build_fcos(cfg, num_classes: int) -> SamplingFreeFCOS:
    c = cfg.MODEL.FCOS
    backbone = backbone_from_config(cfg)
    label_offset = 0 if c.BACKGROUND_COLUMN else 1
    model = SamplingFreeFCOS(
        backbone, head=FCOSHead(backbone.out_channels, 1, num_classes + 1 - label_offset, num_convs=c.NUM_CONVS),
        anchor_generator=build_anchor_generator(cfg, len(backbone.level_strides)), transform=build_transform(cfg),
        switches=resolve_switches(cfg, default_scale=1.0), label_offset=label_offset,
        center_sampling_radius=c.CENTER_SAMPLING_RADIUS, score_thresh=c.SCORE_THRESH, nms_thresh=c.NMS_THRESH,
        detections_per_img=cfg.TEST.DETECTIONS_PER_IMG, topk_candidates=c.TOPK_CANDIDATES,
        focal_alpha=c.FOCAL_LOSS_ALPHA, focal_gamma=c.FOCAL_LOSS_GAMMA, guided_target=c.GUIDED_TARGET,
        threshold_on=c.THRESHOLD_ON)
    model.set_classification_prior(c.PRIOR_PROB)
    return model


def from_torchvision(model: FCOS, switches: Switches) -> SamplingFreeFCOS:
    """A stock torchvision ``FCOS`` made sampling-free on its own modules and weights (see module doc)."""
    return SamplingFreeFCOS(
        model.backbone, head=model.head, anchor_generator=model.anchor_generator, transform=model.transform,
        switches=switches, label_offset=0, center_sampling_radius=model.center_sampling_radius,
        score_thresh=model.score_thresh, nms_thresh=model.nms_thresh, detections_per_img=model.detections_per_img,
        topk_candidates=model.topk_candidates, threshold_on="combined", loss_style="torchvision")
