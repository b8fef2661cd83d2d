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

Losses are normalised as torchvision's FCOS: each summed and divided by max(1, #foreground locations).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.fcos import FCOS, FCOSHead
from torchvision.ops import boxes as box_ops
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ..distributed import average_count
from .backbone import backbone_from_config
from .prior_rules import FCOSPriorCounter
from .common import OneStagePrior, PriorBuffer, Switches, build_anchor_generator, build_transform, \
    frozen_ratio, guided, loss_weights, resolve_switches, weigh


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


class SamplingFreeFCOS(OneStagePrior, FCOS):
    """torchvision ``FCOS`` with the loss, bias and threshold above; labels are 1..C like the datasets."""

    def __init__(self, backbone, *, num_classes: int, switches: Switches, cfg_fcos, anchor_generator, transform,
                 detections_per_img: int):
        c = cfg_fcos
        head = FCOSHead(backbone.out_channels, 1, num_classes, num_convs=c.NUM_CONVS)
        super().__init__(backbone, num_classes, anchor_generator=anchor_generator, head=head,
                         center_sampling_radius=c.CENTER_SAMPLING_RADIUS, nms_thresh=c.NMS_THRESH,
                         detections_per_img=detections_per_img, topk_candidates=c.TOPK_CANDIDATES)
        self.transform, self.switches, self.prior = transform, switches, PriorBuffer()
        self.class_prior = PriorBuffer(num_classes) if switches.per_class_prior else None
        self.focal_alpha, self.focal_gamma = c.FOCAL_LOSS_ALPHA, c.FOCAL_LOSS_GAMMA
        self.baseline_score_thresh, self.guided_target = c.SCORE_THRESH, c.GUIDED_TARGET
        self.last_stats: dict[str, float] = {}
        self.frozen_ratio = frozen_ratio(switches)
        self.loss_weights = loss_weights(switches, ["loss_fcos_cls", "loss_fcos_giou", "loss_fcos_centerness"])
        self.set_classification_prior(c.PRIOR_PROB)

    @property
    def training_stats(self) -> dict[str, float]:
        return self.last_stats

    def prior_counter(self) -> FCOSPriorCounter:
        return FCOSPriorCounter(backbone=self.backbone, anchor_generator=self.anchor_generator,
                                num_classes=self.num_classes, radius=self.center_sampling_radius, assign=fcos_assign)

    def test_score_thresh(self):
        """A float, or a tensor of one per class with ``per_class_prior``."""
        if self.switches.adaptive_threshold:
            return self.score_thresholds()
        return self.baseline_score_thresh

    def compute_loss(self, targets, head_outputs, anchors, num_anchors_per_level):
        cls_logits, deltas, ctrness = (head_outputs[k] for k in ("cls_logits", "bbox_regression", "bbox_ctrness"))
        matched = torch.stack([fcos_assign(a, t["boxes"], num_anchors_per_level, self.center_sampling_radius)
                               for a, t in zip(anchors, targets)])
        fg = matched >= 0
        num_fg = average_count(int(fg.sum()))  # over processes, at least 1
        cls_targets = torch.zeros_like(cls_logits)
        gt_boxes = torch.zeros_like(deltas)
        for i, t in enumerate(targets):
            k = fg[i].nonzero().squeeze(1)
            cls_targets[i, k, t["labels"][matched[i, k]] - 1] = 1.0
            gt_boxes[i, k] = t["boxes"][matched[i, k]]
        if self.switches.no_heuristic:
            loss_cls = F.binary_cross_entropy_with_logits(cls_logits, cls_targets, reduction="sum") / num_fg
        else:
            loss_cls = sigmoid_focal_loss(cls_logits, cls_targets, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                          reduction="sum") / num_fg
        anchors = torch.stack(anchors)
        if fg.any():
            pred = self.box_coder.decode(deltas, anchors)
            loss_giou = generalized_box_iou_loss(pred[fg], gt_boxes[fg], reduction="sum") / num_fg
            reg = self.box_coder.encode(anchors[fg], gt_boxes[fg])
            ctr_target = torch.sqrt((reg[:, [0, 2]].min(1).values / reg[:, [0, 2]].max(1).values) *
                                    (reg[:, [1, 3]].min(1).values / reg[:, [1, 3]].max(1).values))
            loss_ctr = F.binary_cross_entropy_with_logits(ctrness.squeeze(2)[fg], ctr_target, reduction="sum") / num_fg
        else:  # zero, connected to the graph
            loss_giou, loss_ctr = deltas.sum() * 0.0, ctrness.sum() * 0.0
        self.last_stats = {"num_pos": float(fg.sum()), "cls_unscaled": float(loss_cls.detach())}
        if self.switches.guided_loss:
            reference = loss_giou + loss_ctr if self.guided_target == "giou_centerness" else loss_giou
            loss_cls = guided(self.switches, loss_cls, reference, self.switches.classification_scale,
                              self.frozen_ratio)
        return weigh(self.loss_weights,
                     {"loss_fcos_cls": loss_cls, "loss_fcos_giou": loss_giou, "loss_fcos_centerness": loss_ctr})

    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        """Keep (location, class) pairs whose *classification* probability passes the threshold; rank and NMS them
        by sqrt(classification x centerness)."""
        thresh = self.test_score_thresh()
        detections = []
        for index, image_shape in enumerate(image_shapes):
            boxes_all, scores_all, labels_all = [], [], []
            levels = zip(head_outputs["bbox_regression"], head_outputs["cls_logits"], head_outputs["bbox_ctrness"],
                         anchors[index])
            for deltas, logits, ctr, level_anchors in levels:
                deltas, logits, ctr = deltas[index], logits[index], ctr[index]
                probs = torch.sigmoid(logits)
                keep = torch.where((probs > (thresh.to(probs) if torch.is_tensor(thresh) else thresh)).flatten())[0]
                scores = torch.sqrt(probs * torch.sigmoid(ctr)).flatten()[keep]
                top = det_utils._topk_min(keep, self.topk_candidates, 0)
                scores, order = scores.topk(top)
                keep = keep[order]
                where, labels = keep // logits.shape[-1], keep % logits.shape[-1]
                boxes = self.box_coder.decode(deltas[where], level_anchors[where])
                boxes_all.append(box_ops.clip_boxes_to_image(boxes, image_shape))
                scores_all.append(scores)
                labels_all.append(labels + 1)
            boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return detections


def build_fcos(cfg, num_classes: int) -> SamplingFreeFCOS:
    m = cfg.MODEL
    backbone = backbone_from_config(cfg)
    return SamplingFreeFCOS(
        backbone, num_classes=num_classes, switches=resolve_switches(cfg, default_scale=1.0), cfg_fcos=m.FCOS,
        anchor_generator=build_anchor_generator(cfg, len(backbone.level_strides)), transform=build_transform(cfg),
        detections_per_img=cfg.TEST.DETECTIONS_PER_IMG)
