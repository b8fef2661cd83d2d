"""RetinaNet, baseline or sampling-free: everything sampling-free changes in RetinaNet is in this file.

torchvision's ``RetinaNet`` provides backbone, heads, anchors and decoding. This adapter changes four things:

* **loss** (``RetinaNetLoss``): focal loss -> plain sigmoid BCE over every non-ignored anchor (``no_heuristic``),
  and ``guided_loss_scaling`` of that loss against the box loss (``guided_loss``);
* **bias**: the classification bias starts at ``optimal_bias(π)`` instead of the focal-loss prior 0.01
  (``bias_init``, applied by ``set_prior``);
* **test threshold**: ``adaptive_score_threshold(π, C)`` and NMS 0.55 instead of 0.05 / 0.5
  (``adaptive_threshold``), computed at each call (``test_thresholds``);
* nothing else: matcher, anchors, box coder and regression loss are the same in both modes, as in the original.

Two loss conventions, the same sampling-free change in both:

* ``style="original"`` (our configs): maskrcnn-benchmark's normalisation -- classification summed over anchors
  and classes ÷ (#positives + #images), regression smooth-L1 (β = 0.11) summed ÷ (4 · #positives), box coder
  (10, 10, 5, 5); counts averaged over processes;
* ``style="torchvision"`` (``from_torchvision``, a stock model converted): torchvision's -- per image
  classification ÷ max(1, #positives) and its box loss (L1 for v1, GIoU for v2) ÷ max(1, #positives), averaged
  over images; its own box coder. With every switch off it is torchvision's loss exactly.

Departure from the original (spec bug B3): anchors in the ignore band [BG_IOU, FG_IOU) are left out of the BCE
too, as they are of the focal loss and of the prior count. Options of the original's journal code: the guided
ratio frozen after a warm-up, learned loss weights (``MODEL.SAMPLING_FREE.GUIDED_WARMUP_ITERS``,
``LEARNED_LOSS_WEIGHTS``; ``mechanism.py``). Beyond the paper, an experiment: ``IOU_TARGET``, the BCE target of a
positive is its predicted box's IoU instead of 1 (``positive_targets``).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.ops import boxes as box_ops
from torchvision.ops import sigmoid_focal_loss
from torchvision.ops.misc import Conv2dNormActivation

from . import torchvision_internals as tv
from ..distributed import average_count
from .backbone import backbone_from_config
from .common import PriorBuffer, Switches, build_anchor_generator, build_transform, frozen_ratio, guided, \
    loss_weights, resolve_switches, weigh
from .one_stage import OneStagePrior, select_detections
from .prior_rules import AnchorPriorCounter, paired_iou

# loss names: ours, and torchvision's (a converted model keeps its contract)
LOSS_NAMES = {"original": ("loss_retina_cls", "loss_retina_reg"), "torchvision": ("classification", "bbox_regression")}


class RetinaNetLoss(nn.Module):
    """Classification and box losses of RetinaNet for one batch, baseline or sampling-free (see module doc)."""

    def __init__(self, *, switches: Switches, matcher: tv.Matcher, box_coder: tv.BoxCoder,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, style: str = "original",
                 box_loss: str = "smooth_l1", smooth_l1_beta: float = 0.11, label_offset: int = 1):
        super().__init__()
        if style not in ("original", "torchvision"):
            raise ValueError(f"RetinaNet loss style {style!r}: expected 'original' or 'torchvision'")
        self.switches, self.matcher, self.box_coder = switches, matcher, box_coder
        self.focal_alpha, self.focal_gamma, self.smooth_l1_beta = focal_alpha, focal_gamma, smooth_l1_beta
        self.style, self.box_loss_type, self.label_offset = style, box_loss, label_offset
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

    def classification(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed BCE (sampling-free) or focal loss (baseline) over the given anchors."""
        if self.switches.no_heuristic:
            return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
        return sigmoid_focal_loss(logits, targets, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum")

    def forward(self, targets, head_outputs, anchors) -> dict[str, torch.Tensor]:
        cls_logits, box_deltas = head_outputs["cls_logits"], head_outputs["bbox_regression"]
        matched = self.match(targets, anchors)
        num_pos = sum(int((m >= 0).sum()) for m in matched)
        per_image = []  # (classification sum, box loss sum, #positives) per image
        for t, m, logits, deltas, a in zip(targets, matched, cls_logits, box_deltas, anchors):
            fg = torch.where(m >= 0)[0]
            labels = torch.zeros_like(logits)
            gt_boxes = t["boxes"][m[fg]]
            labels[fg, t["labels"][m[fg]] - self.label_offset] = self.positive_targets(gt_boxes, deltas[fg], a[fg])
            valid = m != tv.Matcher.BETWEEN_THRESHOLDS
            per_image.append((self.classification(logits[valid], labels[valid]),
                              self.box_loss(gt_boxes, deltas[fg], a[fg]), len(fg)))
        if self.style == "original":
            # normalisers averaged over processes (every rank calls this): N processes train as one big batch
            loss_cls = sum(c for c, _, _ in per_image) / average_count(num_pos + len(targets))
            loss_reg = sum(r for _, r, _ in per_image) / (4 * average_count(num_pos))
        else:
            loss_cls = sum(c / max(1, n) for c, _, n in per_image) / len(targets)
            loss_reg = sum(r / max(1, n) for _, r, n in per_image) / max(1, len(targets))
        if num_pos == 0:  # zero, connected to the graph so distributed gradient reduction still sees the head
            loss_reg = box_deltas.sum() * 0.0
        self.last_stats = {"num_pos": float(num_pos), "cls_unscaled": float(loss_cls.detach())}
        if self.switches.guided_loss:
            loss_cls = guided(self.switches, loss_cls, loss_reg, self.switches.classification_scale,
                              self.frozen_ratio, outputs=(cls_logits, box_deltas))
            self.last_stats["guided_ratio"] = float(loss_cls.detach() / max(self.last_stats["cls_unscaled"], 1e-12))
        return dict(zip(LOSS_NAMES[self.style], (loss_cls, loss_reg)))

    def positive_targets(self, boxes, deltas, anchors) -> torch.Tensor | float:
        """1 for every positive; with ``iou_target``, the IoU of each positive's predicted box with its object,
        without gradient: a score then says how well the box fits, and BCE stops pushing it towards 1."""
        if not self.switches.iou_target:
            return 1.0
        predicted = self.box_coder.decode_single(deltas.detach(), anchors)
        return paired_iou(predicted, boxes).to(deltas.dtype)

    def box_loss(self, boxes, deltas, anchors) -> torch.Tensor:
        """Summed over one image's positives: smooth-L1 on encoded deltas (the original), or torchvision's
        ``_box_loss`` of its type (l1, smooth_l1, giou, diou, ciou)."""
        if self.style == "original":
            return F.smooth_l1_loss(deltas, self.box_coder.encode_single(boxes, anchors), beta=self.smooth_l1_beta,
                                    reduction="sum")
        return tv.box_loss(self.box_loss_type, self.box_coder, anchors, boxes, deltas,
                                   {"beta": self.smooth_l1_beta})


class SamplingFreeRetinaNet(OneStagePrior, RetinaNet):
    """torchvision ``RetinaNet`` from its parts, with the loss, bias and thresholds above. ``label_offset``: 1 when
    column k is class k + 1 (our configs), 0 when column k is label k and column 0 is background (torchvision's)."""

    def __init__(self, backbone, *, head: RetinaNetHead, anchor_generator, transform, loss: RetinaNetLoss,
                 switches: Switches, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 adaptive_nms_thresh: float = 0.55, detections_per_img: int = 100, topk_candidates: int = 1000):
        super().__init__(backbone, head.classification_head.num_classes, anchor_generator=anchor_generator,
                         head=head, proposal_matcher=loss.matcher, score_thresh=score_thresh, nms_thresh=nms_thresh,
                         detections_per_img=detections_per_img, topk_candidates=topk_candidates)
        self.transform, self.box_coder, self.loss, self.switches = transform, loss.box_coder, loss, switches
        self.label_offset = loss.label_offset
        self.adaptive_nms_thresh = adaptive_nms_thresh
        self.prior = PriorBuffer()
        self.class_prior = PriorBuffer(self.num_classes) if switches.per_class_prior else None
        self.loss_weights = loss_weights(switches, LOSS_NAMES[loss.style])

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
        thresh, nms = self.test_thresholds()
        detections = []
        for index, image_shape in enumerate(image_shapes):
            levels = [(deltas[index], probs, probs, level_anchors) for deltas, probs, level_anchors in zip(
                head_outputs["bbox_regression"], [torch.sigmoid(c[index]) for c in head_outputs["cls_logits"]],
                anchors[index])]
            detections.append(select_detections(
                levels, thresh=self.column_thresholds(thresh, levels[0][1]), topk=self.topk_candidates,
                nms_thresh=nms, detections_per_img=self.detections_per_img, decode=self.box_coder.decode_single,
                image_shape=image_shape, label_offset=self.label_offset))
        return detections


def _tower(channels: int, num_convs: int, norm: str) -> nn.Sequential:
    norm_layer = partial(nn.GroupNorm, 32) if norm == "GN" else None
    tower = nn.Sequential(*[Conv2dNormActivation(channels, channels, norm_layer=norm_layer)
                            for _ in range(num_convs)])
    for layer in tower.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return tower


def build_retinanet(cfg, num_classes: int) -> SamplingFreeRetinaNet:
    """Our config's RetinaNet: the original's losses and box coder, unless the config asks for torchvision's."""
    m, rc = cfg.MODEL, cfg.MODEL.RETINANET
    backbone = backbone_from_config(cfg)
    anchor_generator = build_anchor_generator(cfg, len(backbone.level_strides))
    switches = resolve_switches(cfg, default_scale=1.0)
    label_offset = 0 if rc.BACKGROUND_COLUMN else 1
    head = RetinaNetHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0],
                         num_classes + 1 - label_offset)
    head.classification_head.conv = _tower(backbone.out_channels, rc.NUM_CONVS, rc.HEAD_NORM)
    head.regression_head.conv = _tower(backbone.out_channels, rc.NUM_CONVS, rc.HEAD_NORM)
    loss = RetinaNetLoss(
        switches=switches, matcher=tv.Matcher(rc.FG_IOU_THRESHOLD, rc.BG_IOU_THRESHOLD,
                                                     allow_low_quality_matches=True),
        box_coder=tv.BoxCoder(weights=tuple(rc.BBOX_REG_WEIGHTS)), focal_alpha=rc.FOCAL_LOSS_ALPHA,
        focal_gamma=rc.FOCAL_LOSS_GAMMA, style=rc.LOSS_STYLE, box_loss=rc.BBOX_REG_LOSS,
        smooth_l1_beta=rc.SMOOTH_L1_BETA, label_offset=label_offset)
    model = SamplingFreeRetinaNet(
        backbone, head=head, anchor_generator=anchor_generator, transform=build_transform(cfg), loss=loss,
        switches=switches, score_thresh=rc.SCORE_THRESH, nms_thresh=rc.NMS_THRESH,
        adaptive_nms_thresh=m.SAMPLING_FREE.NMS_THRESH, detections_per_img=cfg.TEST.DETECTIONS_PER_IMG,
        topk_candidates=rc.TOPK_CANDIDATES)
    model.set_classification_prior(rc.PRIOR_PROB)
    return model


def from_torchvision(model: RetinaNet, switches: Switches, *, adaptive_nms_thresh: float = 0.55) -> \
        SamplingFreeRetinaNet:
    """A stock torchvision ``RetinaNet`` (v1 or v2 head) made sampling-free, on its own modules and weights: its
    transform, anchors, matcher, box coder and box loss type, torchvision's loss normalisation, column = label."""
    loss = RetinaNetLoss(switches=switches, matcher=model.proposal_matcher, box_coder=model.box_coder,
                         style="torchvision", box_loss=tv.regression_loss_type(model.head.regression_head), smooth_l1_beta=1.0,
                         label_offset=0)
    return SamplingFreeRetinaNet(
        model.backbone, head=model.head, anchor_generator=model.anchor_generator, transform=model.transform,
        loss=loss, switches=switches, score_thresh=model.score_thresh, nms_thresh=model.nms_thresh,
        adaptive_nms_thresh=adaptive_nms_thresh, detections_per_img=model.detections_per_img,
        topk_candidates=model.topk_candidates)
