"""Faster / Mask R-CNN, baseline or sampling-free: everything sampling-free changes in the R-CNNs is in this file.

Composed explicitly from torchvision pieces (``RegionProposalNetwork``, ``RoIHeads``, ``GeneralizedRCNN``).

RPN (``SamplingFreeRPN``):
* baseline: 256 anchors per image at <= 50 % positives (torchvision's sampler); objectness BCE mean over them;
  box smooth-L1 summed over sampled positives / #sampled;
* sampling-free: **every** anchor with label >= 0 enters the objectness BCE; box loss = 0.5 * mean smooth-L1 over
  the 4 * P coordinates of the positives (or, with ``MODEL.RPN.BOX_LOSS_NORMALIZER images``, the smooth-L1 sum over
  images x 256, the baseline's normaliser); objectness loss guided-scaled to it (x ``MODEL.RPN.CLASSIFICATION_SCALE``);
  objectness bias from π of the RPN's own matcher (class-agnostic, C = 1). With ``MODEL.RPN.OBJECTNESS_NORMALIZER
  levels`` the objectness BCE is a mean per pyramid level, averaged over the levels (not the original's).
* both: anchors crossing the image border by more than ``MODEL.RPN.STRADDLE_THRESH`` are ignored (-1 keeps all).

RoI box head (``SamplingFreeRoIHeads``):
* baseline: 512 proposals per image at <= 25 % positives; softmax CE mean; class-specific smooth-L1 summed over
  positives / #sampled; test score threshold 0.05;
* sampling-free: **every** proposal (plus the ground-truth boxes); CE mean guided-scaled to the box loss, which is
  the mean smooth-L1 over the 4 * P coordinates, x ``MODEL.CLASSIFICATION_SCALE`` (default 2); test score
  threshold ``MODEL.SAMPLING_FREE.ROI_SCORE_THRESH`` (1e-4). The softmax bias starts at 0 in both modes, and the
  predictor's weights as the original's (``init_box_predictor``).
* mask head: loss unchanged, fed every positive RoI (the baseline's sampler keeps at most 128 per image).
* baseline with ``MODEL.ROI_HEADS.SAMPLER ohem``: online hard example mining instead of the random sampler --
  every RoI through the box head without gradient, then per image the ``BATCH_SIZE_PER_IMAGE`` RoIs of largest
  loss (after NMS by loss among RoIs of one label, ``OHEM_NMS_THRESH``) are trained on (``hardest_rois``), as Shrivastava et al.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import boxes as box_ops
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from . import torchvision_internals as tv
from ..distributed import average_count
from ..mechanism import optimal_bias
from .backbone import backbone_from_config
from .prior_rules import AnchorPriorCounter
from .contract import TestThresholds, bias_report, eval_copy
from .common import PriorBuffer, Switches, build_anchor_generator, build_transform, frozen_ratio, \
    guided, inside_image, loss_weights, resolve_switches, weigh
from .roi_align import ParallelMultiScaleRoIAlign, with_torchvision_roi_align


RPN_LOSSES = ("loss_objectness", "loss_rpn_box_reg")


def init_box_predictor(predictor: nn.Module) -> None:
    """The original's (maskrcnn-benchmark's) box predictor init, in both modes: class scores N(0, 0.01), box deltas
    N(0, 0.001), biases 0 -- all classes start equal, and the first box deltas near zero. torchvision's default
    ``nn.Linear`` init (uniform, class bias up to ±1/sqrt(fan_in)) would start the classes unequal, and under guided
    scaling the classification gradient is tied to the box loss those first deltas make."""
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)


class SamplingFreeRPN(RegionProposalNetwork):
    def __init__(self, *, switches: Switches, rpn_scale: float, straddle_thresh: float, smooth_l1_beta: float,
                 box_loss_normalizer: str = "positives", objectness_normalizer: str = "anchors", **kwargs):
        super().__init__(**kwargs)
        if box_loss_normalizer not in ("positives", "images"):
            raise ValueError(f"RPN box loss normalizer {box_loss_normalizer!r}: expected 'positives' or 'images'")
        if objectness_normalizer not in ("anchors", "levels"):
            raise ValueError(f"RPN objectness normalizer {objectness_normalizer!r}: expected 'anchors' or 'levels'")
        self.switches, self.rpn_scale, self.box_loss_normalizer = switches, rpn_scale, box_loss_normalizer
        self.objectness_normalizer = objectness_normalizer
        self.straddle_thresh, self.smooth_l1_beta = straddle_thresh, smooth_l1_beta
        self.frozen_ratio = frozen_ratio(switches)
        self.last_stats: dict[str, float] = {}

    def assign(self, anchors, targets, image_sizes):
        """Per anchor: 1 foreground, 0 background, -1 ignored (between thresholds or outside the image)."""
        labels, matched_boxes = [], []
        for a, t, size in zip(anchors, targets, image_sizes):
            if t["boxes"].numel() == 0:
                label = torch.zeros(a.shape[0], device=a.device)
                matched = torch.zeros_like(a)
            else:
                idx = self.proposal_matcher(self.box_similarity(t["boxes"], a))
                matched = t["boxes"][idx.clamp(min=0)]
                label = (idx >= 0).float()
                label[idx == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
            label[~inside_image(a, size, self.straddle_thresh)] = -1.0
            labels.append(label)
            matched_boxes.append(matched)
        return labels, matched_boxes

    def loss(self, objectness, deltas, labels_per_image, regression_targets, level_of_anchor=None):
        labels, regression_targets = torch.cat(labels_per_image), torch.cat(regression_targets)
        objectness = objectness.flatten()
        if self.switches.no_heuristic:
            used = torch.where(labels >= 0)[0]
        else:
            pos, neg = self.fg_bg_sampler(labels_per_image)
            used = torch.where(torch.cat(pos) | torch.cat(neg))[0]
        positive = used[labels[used] == 1]
        num_used, num_pos = average_count(used.numel()), average_count(positive.numel())  # over processes
        if self.switches.no_heuristic and self.objectness_normalizer == "levels":
            loss_obj = objectness_mean_per_level(objectness[used], labels[used], level_of_anchor[used])
        else:
            loss_obj = F.binary_cross_entropy_with_logits(objectness[used], labels[used], reduction="sum") / num_used
        loss_reg = F.smooth_l1_loss(deltas[positive], regression_targets[positive], beta=self.smooth_l1_beta,
                                    reduction="sum")  # 0, still connected, without positives
        if not self.switches.no_heuristic:
            loss_reg = loss_reg / num_used
        elif self.box_loss_normalizer == "images":  # grows with the objects per image, as the samplers' loss does
            loss_reg = loss_reg / (average_count(len(labels_per_image)) * self.fg_bg_sampler.batch_size_per_image)
        else:
            loss_reg = loss_reg / (4 * num_pos) * 0.5
        self.last_stats = {"rpn_samples": float(used.numel()), "rpn_pos": float(positive.numel())}
        if self.switches.guided_loss:
            loss_obj = guided(self.switches, loss_obj, loss_reg, self.rpn_scale, self.frozen_ratio,
                              outputs=(objectness, deltas))
        return loss_obj, loss_reg

    def forward(self, images, features, targets=None):
        features = list(features.values())
        objectness, deltas = self.head(features)
        anchors = self.anchor_generator(images, features)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        losses = {}
        if self.training:
            labels, matched = self.assign(anchors, targets, images.image_sizes)
            regression_targets = self.box_coder.encode(matched, anchors)
            level_of_anchor = None  # only the per-level objectness mean needs it
            if self.switches.no_heuristic and self.objectness_normalizer == "levels":
                level_of_anchor = torch.cat([torch.full((n,), level, device=objectness.device)
                                             for level, n in enumerate(num_anchors_per_level)]).repeat(len(anchors))
            loss_obj, loss_reg = self.loss(objectness, deltas, labels, regression_targets, level_of_anchor)
            losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_reg}
        return boxes, losses


def objectness_mean_per_level(logits: torch.Tensor, labels: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """BCE averaged within each pyramid level, then over the levels present: each level gets an equal share of the
    objectness gradient. In one mean over every anchor the coarsest level (0.1 % of the anchors, the largest
    objects) gets almost none, and a sampling-free RPN stops telling its objects from background there
    (docs/results.md)."""
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    num_levels = int(levels.max()) + 1 if levels.numel() else 1
    sums = torch.zeros(num_levels, dtype=bce.dtype, device=bce.device).index_add(0, levels, bce)
    local = torch.bincount(levels, minlength=num_levels)
    counts = sums.new_tensor([average_count(n) for n in local.tolist()])  # over processes, as num_used
    present = local > 0
    return (sums / counts)[present].sum() / max(1, int(present.sum()))


def rcnn_box_loss(class_logits, positive_deltas, labels, positive_targets, *, switches: Switches, beta: float,
                  frozen=None):
    """Softmax CE over every RoI given; smooth-L1 over the positives' deltas (already selected: class-specific or
    class-agnostic). Baseline: box loss summed / #RoIs; sampling-free: mean over the 4 * P coordinates, and the CE
    guided-scaled to it (through ``frozen``, a ``FrozenGuidedRatio``, when given). Returns (loss_cls, loss_reg,
    stats)."""
    num_rois, num_pos = average_count(labels.numel()), average_count(positive_deltas.shape[0])  # over processes
    loss_cls = F.cross_entropy(class_logits, labels, reduction="sum") / num_rois
    # without positives: zero, but connected to the box layer (DistributedDataParallel needs every gradient)
    loss_reg = F.smooth_l1_loss(positive_deltas, positive_targets, beta=beta, reduction="sum")
    loss_reg = loss_reg / (4 * num_pos) if switches.no_heuristic else loss_reg / num_rois
    stats = {"roi_samples": float(labels.numel()), "roi_pos": float(positive_deltas.shape[0])}
    if switches.guided_loss:
        loss_cls = guided(switches, loss_cls, loss_reg, switches.classification_scale, frozen,
                          outputs=(class_logits, positive_deltas))
    return loss_cls, loss_reg, stats


def roi_losses(class_logits, positive_deltas, labels, positive_targets, *, beta: float) -> torch.Tensor:
    """Each RoI's own loss, as OHEM ranks them: its softmax CE plus, for a positive, its smooth-L1 over 4
    coordinates (``positive_deltas`` / ``positive_targets``: the positives' rows, in order)."""
    loss = F.cross_entropy(class_logits, labels, reduction="none")
    positive = torch.where(labels > 0)[0]
    box = F.smooth_l1_loss(positive_deltas, positive_targets, beta=beta, reduction="none").sum(1)
    return loss.index_add(0, positive, box.to(loss.dtype))


def hardest_rois(losses: list[torch.Tensor], boxes: list[torch.Tensor], labels: list[torch.Tensor], *,
                 per_image: int, nms_thresh: float) -> list[torch.Tensor]:
    """OHEM's selection: per image, the indices of the ``per_image`` RoIs of largest loss; with ``nms_thresh`` > 0,
    among those NMS (by loss, within each label, as the authors' ``get_ohem_minibatch``) keeps, so that overlapping
    copies of one hard RoI do not fill the batch while a hard background RoI and the object it overlaps both stay."""
    keep = []
    for loss, b, label in zip(losses, boxes, labels):
        order = (box_ops.batched_nms(b, loss, label, nms_thresh) if nms_thresh > 0
                 else loss.argsort(descending=True))
        keep.append(order[:per_image])
    return keep


def mask_loss(heads, features, boxes, labels, matched, image_shapes, targets) -> tuple[torch.Tensor, float]:
    """Mask R-CNN's loss on every positive RoI (``labels`` > 0; the baseline's sampler has already cut them to its
    sample), and their number. ``heads`` holds ``mask_roi_pool``, ``mask_head`` and ``mask_predictor``. Averaged
    over this process's RoIs (torchvision's ``maskrcnn_loss``), not over all processes."""
    positive = [torch.where(label > 0)[0] for label in labels]
    mask_boxes = [b[k] for b, k in zip(boxes, positive)]
    count = sum(len(b) for b in mask_boxes)
    if count == 0:  # zero, connected to the mask branch (DistributedDataParallel needs every gradient)
        return sum(p.sum() for p in heads.mask_predictor.parameters()) * 0.0, 0.0
    logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, mask_boxes, image_shapes)))
    loss = maskrcnn_loss(logits, mask_boxes, [t["masks"] for t in targets], [t["labels"] for t in targets],
                         [m[k] for m, k in zip(matched, positive)])
    return loss, float(count)


class SamplingFreeRoIHeads(RoIHeads):
    def __init__(self, *, switches: Switches, smooth_l1_beta: float, free_score_thresh: float,
                 sampler: str = "random", ohem_nms_thresh: float = 0.7, **kwargs):
        super().__init__(**kwargs)
        self.switches, self.smooth_l1_beta = switches, smooth_l1_beta
        self.ohem = sampler == "ohem" and not switches.no_heuristic
        self.ohem_nms_thresh = ohem_nms_thresh
        self.free_score_thresh = free_score_thresh
        self.frozen_ratio = frozen_ratio(switches)
        self.last_stats: dict[str, float] = {}

    @property
    def score_thresh(self) -> float:
        """The test score threshold of the current switches (torchvision's ``RoIHeads`` reads it)."""
        return self.free_score_thresh if self.switches.adaptive_threshold else self.baseline_score_thresh

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        self.baseline_score_thresh = value

    def subsample(self, labels):
        if self.switches.no_heuristic or self.ohem:  # every proposal (and GT box); OHEM then picks the hardest
            return [torch.where(label >= 0)[0] for label in labels]
        return super().subsample(labels)

    @torch.no_grad()
    def hardest(self, features, proposals, image_shapes, labels, regression_targets) -> list[torch.Tensor]:
        """OHEM: per image, which RoIs to train on (``hardest_rois`` of every RoI's loss under the current head)."""
        logits, regression = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_shapes)))
        flat = torch.cat(labels)
        positive = torch.where(flat > 0)[0]
        per_class = regression.reshape(flat.numel(), -1, 4)[positive, flat[positive]]
        losses = roi_losses(logits, per_class, flat, torch.cat(regression_targets)[positive], beta=self.smooth_l1_beta)
        return hardest_rois(list(losses.split([len(p) for p in proposals])), proposals, labels,
                            per_image=self.fg_bg_sampler.batch_size_per_image, nms_thresh=self.ohem_nms_thresh)

    def box_loss(self, class_logits, box_regression, labels, regression_targets):
        labels = torch.cat(labels)
        positive = torch.where(labels > 0)[0]
        per_class = box_regression.reshape(labels.numel(), -1, 4)[positive, labels[positive]]
        loss_cls, loss_reg, self.last_stats = rcnn_box_loss(
            class_logits, per_class, labels, torch.cat(regression_targets)[positive], switches=self.switches,
            beta=self.smooth_l1_beta, frozen=self.frozen_ratio)
        return loss_cls, loss_reg

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        if self.ohem:
            keep = self.hardest(features, proposals, image_shapes, labels, regression_targets)
            proposals, matched_idxs, labels, regression_targets = (
                [x[k] for x, k in zip(xs, keep)] for xs in (proposals, matched_idxs, labels, regression_targets))
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_cls, loss_reg = self.box_loss(class_logits, box_regression, labels, regression_targets)
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_reg}
        if self.has_mask():
            losses["loss_mask"], self.last_stats["mask_rois"] = mask_loss(
                self, features, proposals, labels, matched_idxs, image_shapes, targets)
        return [], losses


class SamplingFreeRCNN(GeneralizedRCNN):
    """torchvision's GeneralizedRCNN over the RPN and RoI heads above; labels are 1..C like the datasets.
    ``switches`` are the RoI heads'; the RPN has its own (``rpn.switches``, the same unless set per stage)."""

    def __init__(self, backbone, rpn: SamplingFreeRPN, roi_heads: SamplingFreeRoIHeads, transform, *,
                 num_classes: int, switches: Switches, loss_names):
        super().__init__(backbone, rpn, roi_heads, transform)
        self.switches, self._num_classes = switches, num_classes
        self.prior = PriorBuffer()
        self.loss_weights = loss_weights(switches, loss_names)

    def forward(self, images, targets=None):
        out = super().forward(images, targets)
        return weigh(self.loss_weights, out) if self.training else out

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def objectness_bias(self) -> torch.Tensor:
        return self.rpn.head.cls_logits.bias

    def set_prior(self, prior: float, per_class=None) -> None:
        """Record the RPN's π; with the RPN's ``bias_init`` on, also start the objectness bias there.
        (``per_class``: always None, the RPN is class-agnostic.)"""
        self.prior.set(prior)
        if self.rpn.switches.bias_init:
            with torch.no_grad():
                self.objectness_bias.fill_(optimal_bias(prior))

    def describe_prior(self) -> dict:
        """π is the RPN's (class-agnostic, C = 1) and sets its objectness bias; the thresholds are the box head's."""
        thresh, nms = self.test_thresholds()
        return {"prior": self.prior.get(), "class_priors": None, "num_classes": 1,
                "bias": bias_report(self.rpn.switches, self.prior.get()), "score_threshold": thresh,
                "nms_threshold": nms}

    def test_thresholds(self) -> TestThresholds:
        """The box head's: 1e-4 (``MODEL.SAMPLING_FREE.ROI_SCORE_THRESH``) with the adaptive threshold, as the
        original, else the baseline's."""
        return TestThresholds(self.roi_heads.score_thresh, self.roi_heads.nms_thresh)

    def set_test_thresholds(self, *, score: float | None = None, nms: float | None = None) -> None:
        if score is not None:
            self.roi_heads.baseline_score_thresh = score
        if nms is not None:
            self.roi_heads.nms_thresh = nms

    def exportable(self):
        """Our parallel RoIAlign sizes its output with ``len(rois)``, which a trace freezes; the copy has
        torchvision's ``MultiScaleRoIAlign`` instead (the same numbers at inference)."""
        return with_torchvision_roi_align(eval_copy(self))

    def prior_counter(self) -> AnchorPriorCounter:
        """π of the RPN: its anchors (minus those straddling the border, as in its loss), its matcher, C = 1."""
        return AnchorPriorCounter(backbone=self.backbone, anchor_generator=self.rpn.anchor_generator,
                                  matcher=self.rpn.proposal_matcher, num_classes=1, class_agnostic=True,
                                  straddle_thresh=self.rpn.straddle_thresh)

    @property
    def training_stats(self) -> dict[str, float]:
        return {**self.rpn.last_stats, **self.roi_heads.last_stats}

    @property
    def has_masks(self) -> bool:
        return getattr(self.roi_heads, "mask_predictor", None) is not None

    @property
    def export_caveat(self) -> str | None:
        """What a traced export of this model cannot do, if anything (export.py records it)."""
        return getattr(self.roi_heads, "export_caveat", None)


def mask_branch(cfg, feature_names, channels: int, num_classes: int) -> dict:
    """The mask branch's modules (``mask_roi_pool``, ``mask_head``, ``mask_predictor``) of Mask and Cascade Mask
    R-CNN, as RoI-head keyword arguments; empty without ``MODEL.MASK_ON``."""
    if not cfg.MODEL.MASK_ON:
        return {}
    mh = cfg.MODEL.ROI_MASK_HEAD
    return dict(mask_roi_pool=ParallelMultiScaleRoIAlign(feature_names, mh.POOLER_RESOLUTION, mh.POOLER_SAMPLING_RATIO),
                mask_head=MaskRCNNHeads(channels, tuple(mh.CONV_LAYERS), 1),
                mask_predictor=MaskRCNNPredictor(mh.CONV_LAYERS[-1], mh.CONV_LAYERS[-1], num_classes + 1))


def stage_switches(cfg) -> tuple[Switches, Switches]:
    """(RPN switches, RoI-head switches): both follow ``SAMPLING_FREE_ON`` unless ``MODEL.SAMPLING_FREE.RPN`` or
    ``ROI_HEADS`` sets that stage on its own -- to train a heuristic RPN under sampling-free RoI heads, or the
    reverse (which half carries a difference)."""
    sf = cfg.MODEL.SAMPLING_FREE
    return (resolve_switches(cfg, default_scale=2.0, stage_on=sf.RPN),
            resolve_switches(cfg, default_scale=2.0, stage_on=sf.ROI_HEADS))


def build_backbone_and_rpn(cfg, switches: Switches):
    """The parts every two-stage detector shares: backbone + FPN, the RPN, and the FPN level names for RoIAlign."""
    m = cfg.MODEL
    if switches.per_class_prior:
        raise ValueError("MODEL.SAMPLING_FREE.PER_CLASS_PRIOR is for one-stage detectors (RetinaNet, FCOS): the RPN's "
                         "objectness is class-agnostic and the R-CNN box head's softmax bias starts at 0")
    backbone = backbone_from_config(cfg)
    anchor_generator = build_anchor_generator(cfg, len(backbone.level_strides))
    r = m.RPN
    rpn = SamplingFreeRPN(
        switches=switches, rpn_scale=r.CLASSIFICATION_SCALE, straddle_thresh=r.STRADDLE_THRESH,
        smooth_l1_beta=r.SMOOTH_L1_BETA, box_loss_normalizer=r.BOX_LOSS_NORMALIZER,
        objectness_normalizer=r.OBJECTNESS_NORMALIZER, anchor_generator=anchor_generator,
        head=RPNHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0]),
        fg_iou_thresh=r.FG_IOU_THRESHOLD, bg_iou_thresh=r.BG_IOU_THRESHOLD,
        batch_size_per_image=r.BATCH_SIZE_PER_IMAGE, positive_fraction=r.POSITIVE_FRACTION,
        pre_nms_top_n={"training": r.PRE_NMS_TOP_N_TRAIN, "testing": r.PRE_NMS_TOP_N_TEST},
        post_nms_top_n={"training": r.POST_NMS_TOP_N_TRAIN, "testing": r.POST_NMS_TOP_N_TEST},
        nms_thresh=r.NMS_THRESH)
    return backbone, rpn, [f"p{level}" for level in range(m.FPN.MIN_LEVEL, 6)]


def build_rcnn(cfg, num_classes: int) -> SamplingFreeRCNN:
    m = cfg.MODEL
    rpn_switches, switches = stage_switches(cfg)
    backbone, rpn, names = build_backbone_and_rpn(cfg, rpn_switches)
    h, b = m.ROI_HEADS, m.ROI_BOX_HEAD
    box_pool = ParallelMultiScaleRoIAlign(names, b.POOLER_RESOLUTION, b.POOLER_SAMPLING_RATIO)
    mask_kwargs = mask_branch(cfg, names, backbone.out_channels, num_classes)
    predictor = FastRCNNPredictor(b.MLP_HEAD_DIM, num_classes + 1)
    init_box_predictor(predictor)
    roi_heads = SamplingFreeRoIHeads(
        switches=switches, smooth_l1_beta=b.SMOOTH_L1_BETA, free_score_thresh=m.SAMPLING_FREE.ROI_SCORE_THRESH,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(backbone.out_channels * b.POOLER_RESOLUTION**2, b.MLP_HEAD_DIM),
        box_predictor=predictor,
        fg_iou_thresh=h.FG_IOU_THRESHOLD, bg_iou_thresh=h.BG_IOU_THRESHOLD,
        batch_size_per_image=h.BATCH_SIZE_PER_IMAGE, positive_fraction=h.POSITIVE_FRACTION, sampler=h.SAMPLER,
        ohem_nms_thresh=h.OHEM_NMS_THRESH,
        bbox_reg_weights=tuple(h.BBOX_REG_WEIGHTS), score_thresh=h.SCORE_THRESH, nms_thresh=h.NMS_THRESH,
        detections_per_img=cfg.TEST.DETECTIONS_PER_IMG, **mask_kwargs)
    return SamplingFreeRCNN(backbone, rpn, roi_heads, build_transform(cfg), num_classes=num_classes,
                            switches=switches, loss_names=RPN_LOSSES + ("loss_classifier", "loss_box_reg")
                            + (("loss_mask",) if m.MASK_ON else ()))


def from_torchvision(model: GeneralizedRCNN, switches: Switches) -> SamplingFreeRCNN:
    """A stock torchvision ``FasterRCNN`` / ``MaskRCNN`` made sampling-free on its own modules and weights: its
    transform, anchors, RoI pooling, thresholds and box coders; torchvision's smooth-L1 β (1/9) in both stages; no
    anchor dropped for straddling the border (torchvision keeps them). Background is label 0, as ours."""
    rpn, heads = model.rpn, model.roi_heads
    new_rpn = SamplingFreeRPN(
        switches=switches, rpn_scale=1.0, straddle_thresh=-1, smooth_l1_beta=1.0 / 9,
        anchor_generator=rpn.anchor_generator, head=rpn.head, fg_iou_thresh=rpn.proposal_matcher.high_threshold,
        bg_iou_thresh=rpn.proposal_matcher.low_threshold, batch_size_per_image=rpn.fg_bg_sampler.batch_size_per_image,
        positive_fraction=rpn.fg_bg_sampler.positive_fraction, pre_nms_top_n=tv.rpn_top_n(rpn)[0],
        post_nms_top_n=tv.rpn_top_n(rpn)[1], nms_thresh=rpn.nms_thresh, score_thresh=rpn.score_thresh)
    masks = {name: getattr(heads, name) for name in ("mask_roi_pool", "mask_head", "mask_predictor")}
    new_heads = SamplingFreeRoIHeads(
        switches=switches, smooth_l1_beta=1.0 / 9, free_score_thresh=1e-4, box_roi_pool=heads.box_roi_pool,
        box_head=heads.box_head, box_predictor=heads.box_predictor,
        fg_iou_thresh=heads.proposal_matcher.high_threshold, bg_iou_thresh=heads.proposal_matcher.low_threshold,
        batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
        positive_fraction=heads.fg_bg_sampler.positive_fraction, bbox_reg_weights=heads.box_coder.weights,
        score_thresh=heads.score_thresh, nms_thresh=heads.nms_thresh, detections_per_img=heads.detections_per_img,
        **masks)
    has_mask = masks["mask_predictor"] is not None
    return SamplingFreeRCNN(model.backbone, new_rpn, new_heads, model.transform,
                            num_classes=heads.box_predictor.cls_score.out_features - 1, switches=switches,
                            loss_names=RPN_LOSSES + ("loss_classifier", "loss_box_reg")
                            + (("loss_mask",) if has_mask else ()))
