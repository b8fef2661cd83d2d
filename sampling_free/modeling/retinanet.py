"""RetinaNet, baseline or sampling-free: everything sampling-free changes in RetinaNet is in this file.

torchvision's ``RetinaNet`` provides backbone, heads, anchors and decoding. This adapter changes four things:

* **loss** (``RetinaNetLoss``): focal loss -> plain sigmoid BCE over every non-ignored anchor (``no_heuristic``),
  and ``guided_loss_scaling`` of that loss against the box loss (``guided_loss``);
* **bias**: the classification bias starts at ``optimal_bias(π)`` instead of the focal-loss prior 0.01
  (``bias_init``, applied by ``set_prior``);
* **test threshold**: ``adaptive_score_threshold(π, C)`` and NMS 0.55 instead of 0.05 / 0.5
  (``adaptive_threshold``);
* nothing else: matcher, anchors, box coder and regression loss are the same in both modes, as in the original.

Options of the original's journal code: the guided ratio frozen after a warm-up, and learned loss weights
(``MODEL.SAMPLING_FREE.GUIDED_WARMUP_ITERS``, ``LEARNED_LOSS_WEIGHTS``; ``mechanism.py``).

Losses follow the original (maskrcnn-benchmark) normalisation: classification summed over anchors and classes
÷ (#positives + #images); regression smooth-L1 (β = 0.11) summed ÷ (4 · #positives), box coder (10, 10, 5, 5).
Departure from the original (spec bug B3): anchors in the ignore band [BG_IOU, FG_IOU) are left out of the BCE
too, as they are of the focal loss and of the prior count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.ops import boxes as box_ops
from torchvision.ops import sigmoid_focal_loss
from torchvision.ops.misc import Conv2dNormActivation

from ..distributed import average_count
from .backbone import backbone_from_config
from .prior_rules import AnchorPriorCounter
from .common import OneStagePrior, PriorBuffer, Switches, build_anchor_generator, build_transform, \
    frozen_ratio, guided, loss_weights, resolve_switches, weigh

BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class RetinaNetLoss(nn.Module):
    """Classification and box losses of RetinaNet for one batch, baseline or sampling-free (see module doc)."""

    def __init__(self, *, switches: Switches, matcher: det_utils.Matcher, box_coder: det_utils.BoxCoder,
                 focal_alpha: float, focal_gamma: float, smooth_l1_beta: float):
        super().__init__()
        self.switches, self.matcher, self.box_coder = switches, matcher, box_coder
        self.focal_alpha, self.focal_gamma, self.smooth_l1_beta = focal_alpha, focal_gamma, smooth_l1_beta
        self.frozen_ratio = frozen_ratio(switches)
        self.last_stats: dict[str, float] = {}  # diagnostics of the latest batch, logged by the trainer

    def match(self, targets, anchors) -> list[torch.Tensor]:
        """Per image and anchor: index of the matched box, -1 background, -2 ignored (torchvision's Matcher)."""
        matched = []
        for t, a in zip(targets, anchors):
            if t["boxes"].numel() == 0:
                matched.append(torch.full((a.shape[0],), -1, dtype=torch.int64, device=a.device))
            else:
                matched.append(self.matcher(box_ops.box_iou(t["boxes"], a)))
        return matched

    def forward(self, targets, head_outputs, anchors) -> dict[str, torch.Tensor]:
        cls_logits, box_deltas = head_outputs["cls_logits"], head_outputs["bbox_regression"]
        matched = torch.stack(self.match(targets, anchors))  # (N, A)
        labels = torch.zeros_like(cls_logits)
        reg_targets, reg_preds = [], []
        for i, (t, m) in enumerate(zip(targets, matched)):
            fg = m >= 0
            labels[i, fg.nonzero().squeeze(1), t["labels"][m[fg]] - 1] = 1.0
            if fg.any():
                reg_targets.append(self.box_coder.encode_single(t["boxes"][m[fg]], anchors[i][fg]))
                reg_preds.append(box_deltas[i, fg])
        valid = matched != det_utils.Matcher.BETWEEN_THRESHOLDS
        num_pos = int((matched >= 0).sum())
        # normalisers averaged over processes (every rank calls this): N processes train as one big batch
        normaliser, pos_normaliser = average_count(num_pos + len(targets)), average_count(num_pos)
        logits, cls_targets = cls_logits[valid], labels[valid]
        if self.switches.no_heuristic:
            loss_cls = F.binary_cross_entropy_with_logits(logits, cls_targets, reduction="sum") / normaliser
        else:
            loss_cls = sigmoid_focal_loss(logits, cls_targets, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                          reduction="sum") / normaliser
        if num_pos:
            loss_reg = F.smooth_l1_loss(torch.cat(reg_preds), torch.cat(reg_targets), beta=self.smooth_l1_beta,
                                        reduction="sum") / (4 * pos_normaliser)
        else:  # connected to the graph so distributed gradient reduction still sees the head
            loss_reg = box_deltas.sum() * 0.0
        self.last_stats = {"num_pos": float(num_pos), "cls_unscaled": float(loss_cls.detach())}
        if self.switches.guided_loss:
            loss_cls = guided(self.switches, loss_cls, loss_reg, self.switches.classification_scale,
                              self.frozen_ratio)
            self.last_stats["guided_ratio"] = float(loss_cls.detach() / max(self.last_stats["cls_unscaled"], 1e-12))
        return {"loss_retina_cls": loss_cls, "loss_retina_reg": loss_reg}


def _tower(channels: int, num_convs: int, norm: str) -> nn.Sequential:
    norm_layer = (lambda c: nn.GroupNorm(32, c)) if norm == "GN" else None
    tower = nn.Sequential(*[Conv2dNormActivation(channels, channels, norm_layer=norm_layer)
                            for _ in range(num_convs)])
    for layer in tower.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return tower


class SamplingFreeRetinaNet(OneStagePrior, RetinaNet):
    """torchvision ``RetinaNet`` with the loss, bias and threshold above; labels are 1..C like the datasets."""

    def __init__(self, backbone, *, num_classes: int, switches: Switches, cfg_retina, anchor_generator, transform,
                 detections_per_img: int, adaptive_nms_thresh: float):
        rc = cfg_retina
        head = RetinaNetHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0], num_classes)
        head.classification_head.conv = _tower(backbone.out_channels, rc.NUM_CONVS, rc.HEAD_NORM)
        head.regression_head.conv = _tower(backbone.out_channels, rc.NUM_CONVS, rc.HEAD_NORM)
        super().__init__(backbone, num_classes, anchor_generator=anchor_generator, head=head,
                         fg_iou_thresh=rc.FG_IOU_THRESHOLD, bg_iou_thresh=rc.BG_IOU_THRESHOLD,
                         topk_candidates=rc.TOPK_CANDIDATES, detections_per_img=detections_per_img)
        self.transform = transform
        self.box_coder = det_utils.BoxCoder(weights=BOX_CODER_WEIGHTS)
        self.switches = switches
        self.prior = PriorBuffer()
        self.class_prior = PriorBuffer(num_classes) if switches.per_class_prior else None
        self.baseline_score_thresh, self.baseline_nms_thresh = rc.SCORE_THRESH, rc.NMS_THRESH
        self.adaptive_nms_thresh = adaptive_nms_thresh
        self.loss = RetinaNetLoss(switches=switches, matcher=self.proposal_matcher, box_coder=self.box_coder,
                                  focal_alpha=rc.FOCAL_LOSS_ALPHA, focal_gamma=rc.FOCAL_LOSS_GAMMA,
                                  smooth_l1_beta=rc.SMOOTH_L1_BETA)
        self.loss_weights = loss_weights(switches, ["loss_retina_cls", "loss_retina_reg"])
        self.set_classification_prior(rc.PRIOR_PROB)

    def test_thresholds(self) -> tuple:
        """(score threshold, NMS IoU) used at inference; the threshold is a tensor of one per class with
        ``per_class_prior``."""
        if self.switches.adaptive_threshold:
            return self.score_thresholds(), self.adaptive_nms_thresh
        return self.baseline_score_thresh, self.baseline_nms_thresh

    def prior_counter(self) -> AnchorPriorCounter:
        """The rule π is counted with: this model's anchors and matcher, per foreground class."""
        return AnchorPriorCounter(backbone=self.backbone, anchor_generator=self.anchor_generator,
                                  matcher=self.proposal_matcher, num_classes=self.num_classes)

    @property
    def training_stats(self) -> dict[str, float]:
        return self.loss.last_stats

    def compute_loss(self, targets, head_outputs, anchors):
        return weigh(self.loss_weights, self.loss(targets, head_outputs, anchors))

    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        thresh, self.nms_thresh = self.test_thresholds()
        per_class = torch.is_tensor(thresh)
        # per class: candidates above the lowest class threshold, then each class's own
        self.score_thresh = float(thresh.min()) if per_class else thresh
        detections = super().postprocess_detections(head_outputs, anchors, image_shapes)
        for d in detections:
            if per_class:
                keep = d["scores"] > thresh.to(d["scores"])[d["labels"]]
                d.update({k: v[keep] for k, v in d.items()})
            d["labels"] = d["labels"] + 1  # head column k is class k + 1
        return detections


def build_retinanet(cfg, num_classes: int) -> SamplingFreeRetinaNet:
    m = cfg.MODEL
    backbone = backbone_from_config(cfg)
    return SamplingFreeRetinaNet(
        backbone, num_classes=num_classes, switches=resolve_switches(cfg, default_scale=1.0), cfg_retina=m.RETINANET,
        anchor_generator=build_anchor_generator(cfg, len(backbone.level_strides)), transform=build_transform(cfg),
        detections_per_img=cfg.TEST.DETECTIONS_PER_IMG, adaptive_nms_thresh=m.SAMPLING_FREE.NMS_THRESH)
