"""SSD / SSDlite, baseline or sampling-free: everything sampling-free changes in SSD is in this file.

torchvision's ``SSD`` provides the default boxes, heads, matcher (IoU >= 0.5, plus each object's best box) and
decoding. Its heuristic is **hard-negative mining**: the softmax cross-entropy keeps every positive default box and
only the 3 x as many negatives with the highest loss. Sampling-free SSD:

* **loss**: cross-entropy over *every* default box (``no_heuristic``), guided-scaled to the box loss
  (``guided_loss``): ``CE_sum · stopgrad(L_box / CE_sum) · scale``, both ÷ #positives as torchvision's;
* **bias** (``bias_init``): the softmax classifier starts at the measured frequencies. With weights near zero,
  logits ``b_0 = log(1 − C·π)`` (background) and ``b_c = log π`` (each class) give softmax
  ``(1 − C·π, π, …, π)`` exactly, since the terms already sum to 1: the softmax form of ``-log((1 − π)/π)``
  (docs/method.md);
* **test threshold** (``adaptive_threshold``): a class score is kept above π · C (baseline 0.01);
* π is counted with SSD's own default boxes and matcher (``prior_rules.SSDPriorCounter``).

``build_ssd(cfg)`` builds an SSDlite head on our MobileNetV2 (or one of torchvision's SSD builders, named by
``MODEL.SSD.TORCHVISION_BUILDER``); ``from_torchvision`` converts a stock ``SSD`` / SSDlite on its own modules.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead

from . import torchvision_internals as tv
from ..distributed import average_count
from .backbone import build_trunk
from .common import PriorBuffer, Switches, frozen_ratio, guided, loss_weights, resolve_switches, weigh
from .contract import TestThresholds, TorchvisionThresholds, bias_report, threshold_report
from ..mechanism import adaptive_score_threshold
from .prior_rules import SSDPriorCounter

LOSS_NAMES = ("classification", "bbox_regression")  # torchvision's


def softmax_prior_bias(prior: float, num_classes: int) -> tuple[float, float]:
    """(background bias, class bias) that make a near-zero-weight softmax output (1 − C·π, π, …, π)."""
    if not 0 < prior * num_classes < 1:
        raise ValueError(f"π · C = {prior * num_classes} must lie in (0, 1)")
    return math.log(1.0 - num_classes * prior), math.log(prior)


class SamplingFreeSSD(TorchvisionThresholds, SSD):
    """torchvision ``SSD`` from its parts, with the loss, bias and threshold above; labels are 1..C, column 0 the
    background (as torchvision's)."""

    def __init__(self, backbone, *, anchor_generator: DefaultBoxGenerator, size: tuple[int, int], head: nn.Module,
                 switches: Switches, score_thresh: float = 0.01, nms_thresh: float = 0.45,
                 detections_per_img: int = 200, iou_thresh: float = 0.5, topk_candidates: int = 400,
                 positive_fraction: float = 0.25, transform=None):
        num_columns = head.classification_head.num_columns
        super().__init__(backbone, anchor_generator, size, num_columns, head=head, score_thresh=score_thresh,
                         nms_thresh=nms_thresh, detections_per_img=detections_per_img, iou_thresh=iou_thresh,
                         topk_candidates=topk_candidates, positive_fraction=positive_fraction)
        if transform is not None:
            self.transform = transform
        self.switches, self.prior = switches, PriorBuffer()
        self.frozen_ratio = frozen_ratio(switches)
        self.loss_weights = loss_weights(switches, LOSS_NAMES)
        self.last_stats: dict[str, float] = {}

    @property
    def num_classes(self) -> int:
        return self.head.classification_head.num_columns - 1

    @property
    def training_stats(self) -> dict[str, float]:
        return self.last_stats

    def prior_counter(self) -> SSDPriorCounter:
        return SSDPriorCounter(backbone=self.backbone, anchor_generator=self.anchor_generator,
                               matcher=self.proposal_matcher, num_classes=self.num_classes)

    def set_prior(self, prior: float, per_class=None) -> None:
        """Record π; with ``bias_init`` on, start every classification layer's softmax at (1 − C·π, π, …, π)."""
        if per_class is not None:
            raise ValueError("MODEL.SAMPLING_FREE.PER_CLASS_PRIOR is not implemented for SSD")
        self.prior.set(prior)
        if self.switches.bias_init:
            background, foreground = softmax_prior_bias(prior, self.num_classes)
            columns = self.num_classes + 1
            with torch.no_grad():
                for block in self.head.classification_head.module_list:
                    conv = [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1]
                    bias = conv.bias.view(-1, columns)  # anchor-major, class-minor
                    bias[:, 0], bias[:, 1:] = background, foreground

    @property
    def score_thresh(self) -> float:
        """Read by torchvision's post-processing at each call: π · C with the adaptive threshold, else the
        baseline's (set by ``SSD.__init__``)."""
        if self.switches.adaptive_threshold:
            return adaptive_score_threshold(self.prior.get(), self.num_classes)
        return self.baseline_score_thresh

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        self.baseline_score_thresh = value

    def test_thresholds(self) -> TestThresholds:
        return TestThresholds(self.score_thresh, self.nms_thresh)

    def describe_prior(self) -> dict:
        thresh, nms = self.test_thresholds()
        bias = bias_report(self.switches, self.prior.get())
        return {"prior": self.prior.get(), "class_priors": None, "num_classes": self.num_classes,
                "bias": None if bias is None else list(softmax_prior_bias(self.prior.get(), self.num_classes)),
                "score_threshold": threshold_report(thresh), "nms_threshold": nms}

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        if self.switches.no_heuristic:
            losses = self._every_box_loss(targets, head_outputs, anchors, matched_idxs)
        else:  # torchvision's: hard-negative mining, 3 negatives per positive
            losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        num_pos = sum(int((m >= 0).sum()) for m in matched_idxs)
        self.last_stats = {"num_pos": float(num_pos), "cls_unscaled": float(losses["classification"].detach())}
        if self.switches.guided_loss:
            losses["classification"] = guided(self.switches, losses["classification"], losses["bbox_regression"],
                                              self.switches.classification_scale, self.frozen_ratio,
                                              outputs=(head_outputs["cls_logits"], head_outputs["bbox_regression"]))
        return weigh(self.loss_weights, losses)

    def _every_box_loss(self, targets, head_outputs, anchors, matched_idxs) -> dict[str, torch.Tensor]:
        """Cross-entropy over every default box and smooth-L1 over the positives, each summed ÷ #positives (averaged
        over processes, as every loss of our families: N processes train like one with the same global batch)."""
        cls_logits, deltas = head_outputs["cls_logits"], head_outputs["bbox_regression"]
        box_loss, cls_targets, num_pos = [], [], 0
        for t, d, a, m in zip(targets, deltas, anchors, matched_idxs):
            fg = torch.where(m >= 0)[0]
            num_pos += len(fg)
            box_loss.append(F.smooth_l1_loss(d[fg], self.box_coder.encode_single(t["boxes"][m[fg]], a[fg]),
                                             reduction="sum"))
            labels = torch.zeros(len(m), dtype=torch.int64, device=m.device)
            labels[fg] = t["labels"][m[fg]]
            cls_targets.append(labels)
        cls = F.cross_entropy(cls_logits.reshape(-1, cls_logits.shape[-1]), torch.cat(cls_targets), reduction="sum")
        n = average_count(num_pos)
        return {"classification": cls / n, "bbox_regression": torch.stack(box_loss).sum() / n}


class MobileNetV2SSDLiteFeatures(nn.Module):
    """MobileNetV2 for SSDlite: its stride-16 output (96 channels), its last layer (stride 32, 1280 channels), and
    stride-2 extra blocks (torchvision's SSDlite ``_extra_block``) down to 1 x 1."""

    def __init__(self, trunk: nn.Sequential, extra_channels, norm_layer):
        super().__init__()
        self.c4, self.c5 = trunk[:14], trunk[14:]
        channels = [96, 1280, *extra_channels]
        self.extra = nn.ModuleList(tv.ssdlite_extra_block(i, o, norm_layer) for i, o in zip(channels[1:-1], channels[2:]))
        self.out_channels = channels

    def forward(self, x):
        outputs = [self.c4(x)]
        outputs.append(self.c5(outputs[-1]))
        for block in self.extra:
            outputs.append(block(outputs[-1]))
        return {str(k): v for k, v in enumerate(outputs)}


def build_ssd(cfg, num_classes: int) -> SamplingFreeSSD:
    s = cfg.MODEL.SSD
    switches = resolve_switches(cfg, default_scale=1.0)
    if s.TORCHVISION_BUILDER:  # a standard torchvision SSD (ssd300_vgg16, ssdlite320_mobilenet_v3_large)
        b = cfg.MODEL.BACKBONE
        model = getattr(detection, s.TORCHVISION_BUILDER)(weights=None, weights_backbone=b.WEIGHTS or None,
                                                          num_classes=num_classes + 1)
        return from_torchvision(model, switches)
    if cfg.MODEL.BACKBONE.NAME != "mobilenet_v2":
        raise ValueError("MODEL.SSD builds an SSDlite head on MODEL.BACKBONE.NAME mobilenet_v2; for VGG-16 or "
                         "MobileNetV3 set MODEL.SSD.TORCHVISION_BUILDER (ssd300_vgg16, ssdlite320_mobilenet_v3_large)")
    trunk, _ = build_trunk(name="mobilenet_v2", weights=cfg.MODEL.BACKBONE.WEIGHTS, norm=cfg.MODEL.BACKBONE.NORM,
                           trainable_layers=cfg.MODEL.BACKBONE.TRAINABLE_LAYERS)
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = MobileNetV2SSDLiteFeatures(trunk, s.EXTRA_CHANNELS, norm_layer)
    maps = len(backbone.out_channels)
    anchor_generator = DefaultBoxGenerator([list(s.ASPECT_RATIOS)] * maps, min_ratio=s.MIN_RATIO,
                                           max_ratio=s.MAX_RATIO)
    head = SSDLiteHead(backbone.out_channels, anchor_generator.num_anchors_per_location(), num_classes + 1,
                       norm_layer)
    size = (s.SIZE, s.SIZE)
    return SamplingFreeSSD(backbone, anchor_generator=anchor_generator, size=size, head=head, switches=switches,
                           score_thresh=s.SCORE_THRESH, nms_thresh=s.NMS_THRESH,
                           detections_per_img=cfg.TEST.DETECTIONS_PER_IMG, iou_thresh=s.IOU_THRESHOLD,
                           topk_candidates=s.TOPK_CANDIDATES, positive_fraction=1.0 / (1.0 + s.NEG_POS_RATIO))


def from_torchvision(model: SSD, switches: Switches) -> SamplingFreeSSD:
    """A stock torchvision ``SSD`` (ssd300_vgg16) or SSDlite (ssdlite320_mobilenet_v3_large) made sampling-free
    on its own modules and weights: its transform, default boxes, matcher threshold and thresholds."""
    return SamplingFreeSSD(
        model.backbone, anchor_generator=model.anchor_generator, size=tuple(model.transform.fixed_size),
        head=model.head, switches=switches, score_thresh=model.score_thresh, nms_thresh=model.nms_thresh,
        detections_per_img=model.detections_per_img, iou_thresh=model.proposal_matcher.high_threshold,
        topk_candidates=model.topk_candidates, positive_fraction=1.0 / (1.0 + model.neg_to_pos_ratio),
        transform=model.transform)
