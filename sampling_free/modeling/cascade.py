"""Cascade R-CNN (multi-stage), baseline or sampling-free, written on torchvision's RoI pieces.

torchvision has no Cascade R-CNN. This is Cai & Vasconcelos' design: after the RPN, three box stages with IoU
thresholds 0.5 / 0.6 / 0.7, each a 2-MLP head with class-agnostic box regression and its own box-coder weights
((10,10,5,5), (20,20,10,10), (30,30,15,15)); stage k+1 trains and predicts on the boxes stage k refined; stage
losses weigh 1 / 0.5 / 0.25; test scores are the mean of the stages' softmax scores, boxes the last stage's.
Ground-truth boxes join every stage's input during training. An optional mask head (Cascade Mask R-CNN) trains on
the last stage's positive RoIs and predicts on the final detections.

Where sampling-free changes it: the baseline samples 512 RoIs per image at <= 25 % positives *at every stage*;
sampling-free keeps every RoI at every stage and guided-scales each stage's classification loss to its own box
loss (x ``MODEL.CLASSIFICATION_SCALE``), with the losses of ``rcnn.rcnn_box_loss``; test threshold 1e-4.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import maskrcnn_inference
from torchvision.ops import boxes as box_ops

from . import torchvision_internals as tv
from .common import Switches, build_transform, frozen_ratio
from .rcnn import RPN_LOSSES, SamplingFreeRCNN, build_backbone_and_rpn, hardest_rois, init_box_predictor, \
    mask_branch, mask_loss, rcnn_box_loss, roi_losses, stage_switches
from .roi_align import ParallelMultiScaleRoIAlign


class CascadeStage(nn.Module):
    """One stage: 2-MLP head, (C + 1)-way classifier, class-agnostic box regression, its matcher and box coder."""

    def __init__(self, *, in_features: int, mlp_dim: int, num_classes: int, iou: float, weights):
        super().__init__()
        self.box_head = TwoMLPHead(in_features, mlp_dim)
        self.cls_score = nn.Linear(mlp_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(mlp_dim, 4)
        init_box_predictor(self)
        self.matcher = tv.Matcher(iou, iou, allow_low_quality_matches=False)
        self.box_coder = tv.BoxCoder(tuple(weights))

    def forward(self, pooled: torch.Tensor):
        x = self.box_head(pooled)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeRoIHeads(nn.Module):
    def __init__(self, *, box_roi_pool, stages: list[CascadeStage], switches: Switches, loss_weights,
                 batch_size_per_image: int, positive_fraction: float, smooth_l1_beta: float, score_thresh: float,
                 free_score_thresh: float, nms_thresh: float, detections_per_img: int, mask_roi_pool=None,
                 mask_head=None, mask_predictor=None, sampler: str = "random", ohem_nms_thresh: float = 0.7):
        super().__init__()
        self.box_roi_pool, self.stages = box_roi_pool, nn.ModuleList(stages)
        self.switches, self.loss_weights, self.smooth_l1_beta = switches, list(loss_weights), smooth_l1_beta
        self.sampler = tv.BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.ohem = sampler == "ohem" and not switches.no_heuristic  # per stage, as the random sampler
        self.ohem_nms_thresh = ohem_nms_thresh
        self.baseline_score_thresh, self.free_score_thresh = score_thresh, free_score_thresh
        self.nms_thresh, self.detections_per_img = nms_thresh, detections_per_img
        self.mask_roi_pool, self.mask_head, self.mask_predictor = mask_roi_pool, mask_head, mask_predictor
        # one frozen guided ratio per stage when GUIDED_WARMUP_ITERS is set
        self.frozen_ratios = nn.ModuleList([frozen_ratio(switches) for _ in stages]) \
            if switches.guided_warmup_iters > 0 else None
        self.last_stats: dict[str, float] = {}

    export_caveat = ("Cascade R-CNN's inference sizes tensors with len() of the RPN's proposals, which the trace "
                     "freezes: the export is only valid while the RPN returns MODEL.RPN.POST_NMS_TOP_N_TEST "
                     "proposals (true for most real images, not for small or blank ones)")

    @property
    def score_thresh(self) -> float:
        return self.free_score_thresh if self.switches.adaptive_threshold else self.baseline_score_thresh

    def label(self, stage: CascadeStage, boxes, targets):
        """Per image: matched GT index (clamped), class label (0 background) for ``stage``'s IoU threshold."""
        matched, labels = [], []
        for b, t in zip(boxes, targets):
            if t["boxes"].numel() == 0:
                matched.append(torch.zeros(b.shape[0], dtype=torch.int64, device=b.device))
                labels.append(torch.zeros(b.shape[0], dtype=torch.int64, device=b.device))
                continue
            idx = stage.matcher(box_ops.box_iou(t["boxes"], b))
            label = t["labels"][idx.clamp(min=0)].clone()
            label[idx < 0] = 0
            matched.append(idx.clamp(min=0))
            labels.append(label)
        return matched, labels

    def sample(self, stage: CascadeStage, features, boxes, matched, labels, targets, image_shapes):
        """The baseline's RoIs of one stage, per image: the random sampler's, or with OHEM the hardest under the
        stage's current head (``hardest_rois``)."""
        if not self.ohem:
            pos, neg = self.sampler(labels)
            return [torch.where(p | n)[0] for p, n in zip(pos, neg)]
        with torch.no_grad():
            logits, deltas = stage(self.box_roi_pool(features, boxes, image_shapes))
            flat = torch.cat(labels)
            positive = torch.where(flat > 0)[0]
            reg_targets = stage.box_coder.encode_single(self.matched_boxes(matched, targets)[positive],
                                                        torch.cat(boxes)[positive])
            losses = roi_losses(logits, deltas[positive], flat, reg_targets, beta=self.smooth_l1_beta)
        return hardest_rois(list(losses.split([len(b) for b in boxes])), boxes, labels,
                            per_image=self.sampler.batch_size_per_image, nms_thresh=self.ohem_nms_thresh)

    @staticmethod
    def matched_boxes(matched, targets) -> torch.Tensor:
        """Every RoI's matched ground-truth box (zeros in an image without objects), concatenated."""
        return torch.cat([t["boxes"][m] if t["boxes"].numel() else torch.zeros(len(m), 4, device=m.device)
                          for t, m in zip(targets, matched)])

    def refine(self, stage: CascadeStage, deltas, boxes, image_shapes):
        per_image = [len(b) for b in boxes]
        decoded = stage.box_coder.decode(deltas.detach(), boxes).reshape(-1, 4).split(per_image)
        return [box_ops.clip_boxes_to_image(d, s) for d, s in zip(decoded, image_shapes)]

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            return [], self._train(features, proposals, image_shapes, targets)
        return self._infer(features, proposals, image_shapes), {}

    def _train(self, features, proposals, image_shapes, targets):
        losses, stats, boxes = {}, {}, proposals
        for k, (stage, weight) in enumerate(zip(self.stages, self.loss_weights)):
            boxes = [torch.cat([b, t["boxes"].to(b.dtype)]) for b, t in zip(boxes, targets)]
            matched, labels = self.label(stage, boxes, targets)
            if not self.switches.no_heuristic:
                keep = self.sample(stage, features, boxes, matched, labels, targets, image_shapes)
                boxes = [b[i] for b, i in zip(boxes, keep)]
                matched = [m[i] for m, i in zip(matched, keep)]
                labels = [lab[i] for lab, i in zip(labels, keep)]
            logits, deltas = stage(self.box_roi_pool(features, boxes, image_shapes))
            flat_labels = torch.cat(labels)
            positive = torch.where(flat_labels > 0)[0]
            reg_targets = stage.box_coder.encode_single(self.matched_boxes(matched, targets)[positive],
                                                        torch.cat(boxes)[positive])
            loss_cls, loss_reg, stage_stats = rcnn_box_loss(
                logits, deltas[positive], flat_labels, reg_targets, switches=self.switches, beta=self.smooth_l1_beta,
                frozen=self.frozen_ratios[k] if self.frozen_ratios is not None else None)
            losses[f"loss_cls_stage{k}"], losses[f"loss_box_reg_stage{k}"] = weight * loss_cls, weight * loss_reg
            stats.update({f"{key}_stage{k}": value for key, value in stage_stats.items()})
            if k + 1 < len(self.stages):
                boxes = self.refine(stage, deltas, boxes, image_shapes)
        if self.mask_head is not None:
            losses["loss_mask"], stats["mask_rois"] = mask_loss(self, features, boxes, labels, matched, image_shapes,
                                                                targets)
        self.last_stats = stats
        return losses

    @torch.no_grad()
    def _infer(self, features, proposals, image_shapes):
        boxes, probs = proposals, []
        for k, stage in enumerate(self.stages):
            logits, deltas = stage(self.box_roi_pool(features, boxes, image_shapes))
            probs.append(F.softmax(logits, -1))
            refined = self.refine(stage, deltas, boxes, image_shapes)
            if k + 1 < len(self.stages):
                boxes = refined
        scores = torch.stack(probs).mean(0).split([len(b) for b in refined])
        results = []
        for b, s in zip(refined, scores):
            classes = s.shape[1] - 1
            cand_boxes = b[:, None, :].expand(-1, classes, 4).reshape(-1, 4)
            cand_scores = s[:, 1:].reshape(-1)
            cand_labels = torch.arange(1, classes + 1, device=b.device).repeat(len(b))
            keep = torch.where(cand_scores > self.score_thresh)[0]
            keep = keep[box_ops.remove_small_boxes(cand_boxes[keep], 1e-2)]
            keep = keep[box_ops.batched_nms(cand_boxes[keep], cand_scores[keep], cand_labels[keep],
                                            self.nms_thresh)][: self.detections_per_img]
            results.append({"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": cand_labels[keep]})
        if self.mask_head is not None:
            mask_boxes = [r["boxes"] for r in results]
            logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_boxes, image_shapes)))
            for r, m in zip(results, maskrcnn_inference(logits, [r["labels"] for r in results])):
                r["masks"] = m
        return results


def build_cascade_rcnn(cfg, num_classes: int) -> SamplingFreeRCNN:
    """Backbone and RPN as Faster R-CNN's; the cascade instead of the single box head."""
    m = cfg.MODEL
    rpn_switches, switches = stage_switches(cfg)
    backbone, rpn, names = build_backbone_and_rpn(cfg, rpn_switches)
    b, c, h = m.ROI_BOX_HEAD, m.CASCADE, m.ROI_HEADS
    if not len(c.IOUS) == len(c.BBOX_REG_WEIGHTS) == len(c.STAGE_LOSS_WEIGHTS):
        raise ValueError("MODEL.CASCADE.IOUS, BBOX_REG_WEIGHTS and STAGE_LOSS_WEIGHTS need one entry per stage")
    channels = backbone.out_channels
    stages = [CascadeStage(in_features=channels * b.POOLER_RESOLUTION**2, mlp_dim=b.MLP_HEAD_DIM,
                           num_classes=num_classes, iou=iou, weights=w) for iou, w in zip(c.IOUS, c.BBOX_REG_WEIGHTS)]
    mask = mask_branch(cfg, names, channels, num_classes)
    heads = CascadeRoIHeads(
        box_roi_pool=ParallelMultiScaleRoIAlign(names, b.POOLER_RESOLUTION, b.POOLER_SAMPLING_RATIO), stages=stages,
        switches=switches, loss_weights=c.STAGE_LOSS_WEIGHTS, batch_size_per_image=h.BATCH_SIZE_PER_IMAGE,
        positive_fraction=h.POSITIVE_FRACTION, smooth_l1_beta=b.SMOOTH_L1_BETA, score_thresh=h.SCORE_THRESH,
        free_score_thresh=m.SAMPLING_FREE.ROI_SCORE_THRESH, nms_thresh=h.NMS_THRESH,
        detections_per_img=cfg.TEST.DETECTIONS_PER_IMG, sampler=h.SAMPLER, ohem_nms_thresh=h.OHEM_NMS_THRESH, **mask)
    names = RPN_LOSSES + tuple(f"loss_{kind}_stage{k}" for k in range(len(stages)) for kind in ("cls", "box_reg"))
    return SamplingFreeRCNN(backbone, rpn, heads, build_transform(cfg), num_classes=num_classes, switches=switches,
                            loss_names=names + (("loss_mask",) if m.MASK_ON else ()))
