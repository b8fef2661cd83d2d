"""PAA (probabilistic anchor assignment with IoU prediction; Kim & Lee, ECCV 2020), baseline or sampling-free.

PAA is ATSS's detector (FCOS's towers on one square anchor per location, anchor deltas decoded for a GIoU loss)
with two changes, both in this file:

* **assignment from the model's own losses**: for each object, the ``k`` anchors of highest IoU on each pyramid
  level are candidates, those overlapping it at IoU >= 0.1 (and always its best anchor); each is scored by the loss it would have as that object's positive (its classification
  loss for the object's class + the GIoU loss of its predicted box, × ``BOX_WEIGHT``); a two-component Gaussian
  mixture is fitted to the candidates' losses (all objects of a batch at once, on the device: ``fit_two_gaussians``),
  and the candidates up to the boundary -- the candidate of the low-loss component with the highest likelihood
  under the mixture -- are positives (``separate``); an anchor claimed by two objects goes to the higher IoU;
  everything else is background;
* **IoU prediction**: the third branch (FCOS's centerness) is trained, on positives, to the IoU of the predicted box
  with its object (BCE, × ``IOU_WEIGHT``), and detections rank by sqrt(classification × predicted IoU). Optional
  score voting (``MODEL.PAA.SCORE_VOTING``) moves each kept box to the average of its overlapping candidates,
  weighted by their scores and exp(−(1 − IoU)² / 0.025), as the paper.

Baseline: focal loss. Sampling-free, exactly where it changes ATSS (``SamplingFreeFCOS``): BCE over every anchor
(PAA ignores none), guided to the GIoU loss, test threshold π · C. **How π is counted**: PAA's positives depend on
the model's losses, which do not exist before training; π is counted with ``atss_assign`` on the same anchors --
the same top-k-by-IoU candidates per level, split by ATSS's model-free IoU statistic -- a stand-in the original
avoided by fixing π (3e-3 on COCO). The trainer logs PAA's actual positives per image (``num_pos``) beside it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss
from torchvision.ops import boxes as box_ops

from .atss import atss_assign, one_anchor_parts
from .common import guided, loss_weights, weigh
from .fcos import SamplingFreeFCOS
from .prior_rules import paired_iou

LOSS_NAMES = ("loss_paa_cls", "loss_paa_giou", "loss_paa_iou")
VOTING_SIGMA = 0.025


MIN_CANDIDATE_IOU = 0.1  # an anchor barely touching an object is no candidate for it (the reference code's 0.1)


def candidates_by_iou(anchors: torch.Tensor, boxes: torch.Tensor, num_per_level: list[int], topk: int):
    """For each box, the ``topk`` anchors of highest IoU on each level: (G, K) anchor indices, (G, K) their IoUs,
    and (G, K) whether each is a candidate (IoU >= ``MIN_CANDIDATE_IOU``, or the box's best anchor). Equal IoUs
    (every anchor inside a large box has the same) go to the lower anchor index, so the set is well defined."""
    iou = box_iou(anchors, boxes)
    picked, start = [], 0
    for count in num_per_level:
        order = torch.sort(iou[start:start + count], dim=0, descending=True, stable=True).indices
        picked.append(order[:min(topk, count)] + start)
        start += count
    cand = torch.cat(picked).t()
    cand_iou = iou.gather(0, cand.t()).t()
    valid = (cand_iou >= MIN_CANDIDATE_IOU) | (cand_iou == cand_iou.max(1, keepdim=True).values)
    return cand, cand_iou, valid


def fit_two_gaussians(x: torch.Tensor, valid: torch.Tensor, *, iterations: int = 100, tolerance: float = 1e-3,
                      eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """EM for one two-component 1-D Gaussian mixture per row of ``x`` (G, K), over the entries ``valid`` marks,
    every row at once. Components start at each row's smallest and largest value with unit variance and equal
    weights (as PAA); it stops when no row's mean log-likelihood moves by ``tolerance`` (scikit-learn's 1e-3) or
    after ``iterations``. Returns (posterior of the low component (G, K), log-likelihood of each entry under the
    mixture (G, K))."""
    big = torch.finfo(x.dtype).max
    mean = torch.stack([torch.where(valid, x, big).min(1).values, torch.where(valid, x, -big).max(1).values], 1)
    var, weight = torch.ones_like(mean), torch.full_like(mean, 0.5)
    mask = valid.to(x.dtype)
    count = mask.sum(1).clamp(min=1)
    previous = None
    for step in range(iterations + 1):
        # log w_c N(x | mean_c, var_c) of both components, and their log-sum (two terms: no logsumexp needed)
        a, b = (torch.log(weight[:, c:c + 1]) - 0.5 * torch.log(2 * math.pi * var[:, c:c + 1])
                - 0.5 * (x - mean[:, c:c + 1]) ** 2 / var[:, c:c + 1] for c in (0, 1))
        log_mix = torch.maximum(a, b) + torch.log1p(torch.exp(-(a - b).abs()))
        low = torch.exp(a - log_mix)
        score = (log_mix * mask).sum(1) / count
        if step == iterations or (previous is not None and float((score - previous).abs().max()) < tolerance):
            return low, log_mix
        previous = score
        resp = torch.stack([low * mask, (1 - low) * mask], 2)  # (G, K, 2)
        total = resp.sum(1).clamp(min=eps)
        weight = total / count[:, None]
        mean = (resp * x[:, :, None]).sum(1) / total
        var = (resp * (x[:, :, None] - mean[:, None]) ** 2).sum(1) / total + eps


def separate(losses: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """PAA's positives among each row's candidates (G, K): fit the mixture, take as boundary the candidate of the
    low-loss component with the highest mixture likelihood, keep every candidate whose loss is at most its. A row
    with one candidate keeps it; a row whose low component holds none keeps none."""
    low_posterior, log_mix = fit_two_gaussians(losses, valid)
    in_low = valid & (low_posterior > 0.5)
    likelihood = torch.where(in_low, log_mix, torch.full_like(log_mix, -math.inf))
    boundary = losses.gather(1, likelihood.argmax(1, keepdim=True))
    positive = valid & (losses <= boundary) & in_low.any(1, keepdim=True)
    return positive | (valid & (valid.sum(1, keepdim=True) == 1))


class SamplingFreePAA(SamplingFreeFCOS):
    """``SamplingFreeFCOS`` (ATSS's head, box coder and post-processing) with PAA's assignment and IoU branch."""

    def __init__(self, *args, topk: int = 9, box_weight: float = 1.3, iou_weight: float = 0.5,
                 score_voting: bool = False, **kwargs):
        super().__init__(*args, assign=atss_assign, assign_parameter=topk, loss_style="original", **kwargs)
        self.topk, self.box_weight, self.iou_weight, self.score_voting = topk, box_weight, iou_weight, score_voting
        self.loss_names, self.loss_weights = LOSS_NAMES, loss_weights(self.switches, LOSS_NAMES)

    def classification_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Elementwise: BCE (sampling-free) or focal loss (baseline)."""
        if self.switches.no_heuristic:
            return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return sigmoid_focal_loss(logits, targets, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none")

    @torch.no_grad()
    def assign_batch(self, cls_logits, pred_boxes, anchors, targets, num_per_level) -> torch.Tensor:
        """(N, A) index of each anchor's object, -1 background: PAA's split, every object of the batch in one fit."""
        matched = torch.full(cls_logits.shape[:2], -1, dtype=torch.int64, device=cls_logits.device)
        rows, scores, owners, masks = [], [], [], []
        for i, t in enumerate(targets):
            if t["boxes"].numel() == 0:
                continue
            cand, cand_iou, valid = candidates_by_iou(anchors[i], t["boxes"], num_per_level, self.topk)  # (G, K)
            g = torch.arange(len(t["boxes"]), device=cand.device)[:, None].expand_as(cand)
            onehot = torch.zeros(*cand.shape, cls_logits.shape[-1], device=cls_logits.device)
            onehot.scatter_(2, (t["labels"] - self.label_offset)[g][..., None], 1.0)
            cls = self.classification_loss(cls_logits[i][cand], onehot).sum(2)
            box = generalized_box_iou_loss(pred_boxes[i][cand].reshape(-1, 4), t["boxes"][g].reshape(-1, 4),
                                           reduction="none").reshape(cand.shape)
            rows.append((i, cand, cand_iou))
            scores.append(cls + self.box_weight * box)
            owners.append(g)
            masks.append(valid)
        if not rows:
            return matched
        width = max(s.shape[1] for s in scores)
        losses = torch.cat([F.pad(s, (0, width - s.shape[1]), value=0.0) for s in scores])
        valid = torch.cat([F.pad(m, (0, width - m.shape[1])) for m in masks])
        positive = separate(losses, valid).split([len(s) for s in scores])
        for (i, cand, cand_iou), pos, g in zip(rows, positive, owners):
            pos = pos[:, :cand.shape[1]]
            claims = torch.full((cls_logits.shape[1], len(cand)), -1.0, device=cand.device)
            claims[cand[pos], g[pos]] = cand_iou[pos]  # an anchor claimed twice goes to the higher IoU
            best, index = claims.max(1)
            matched[i] = torch.where(best >= 0, index, torch.full_like(index, -1))
        return matched

    def compute_loss(self, targets, head_outputs, anchors, num_anchors_per_level):
        cls_logits, deltas, iou_logits = (head_outputs[k] for k in ("cls_logits", "bbox_regression", "bbox_ctrness"))
        anchors = torch.stack(anchors)
        pred = torch.stack([self.decode(d, a) for d, a in zip(deltas, anchors)])
        matched = self.assign_batch(cls_logits.detach(), pred.detach(), anchors, targets, num_anchors_per_level)
        fg, num_fg, cls_targets, gt_boxes = self.targets_of(matched, targets, cls_logits)
        loss_cls = self.classification_loss(cls_logits, cls_targets).sum() / num_fg
        if fg.any():
            loss_box = self.box_weight * generalized_box_iou_loss(pred[fg], gt_boxes[fg], reduction="sum") / num_fg
            target_iou = paired_iou(pred[fg].detach(), gt_boxes[fg])
            loss_iou = self.iou_weight * F.binary_cross_entropy_with_logits(
                iou_logits.squeeze(2)[fg], target_iou, reduction="sum") / num_fg
        else:  # zero, connected to the graph
            loss_box, loss_iou = deltas.sum() * 0.0, iou_logits.sum() * 0.0
        self.last_stats = {"num_pos": float(fg.sum()), "cls_unscaled": float(loss_cls.detach())}
        if self.switches.guided_loss:
            loss_cls = guided(self.switches, loss_cls, loss_box, self.switches.classification_scale, self.frozen_ratio)
        return weigh(self.loss_weights, dict(zip(self.loss_names, (loss_cls, loss_box, loss_iou))))

    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        if not self.score_voting:
            return super().postprocess_detections(head_outputs, anchors, image_shapes)
        keep_nms, keep_count = self.nms_thresh, self.detections_per_img
        self.nms_thresh, self.detections_per_img = 1.0, 10 ** 6  # every candidate above the threshold
        try:
            candidates = super().postprocess_detections(head_outputs, anchors, image_shapes)
        finally:
            self.nms_thresh, self.detections_per_img = keep_nms, keep_count
        nms = self.test_thresholds().nms
        return [vote(c, nms_thresh=nms, detections_per_img=self.detections_per_img) for c in candidates]


def vote(candidates: dict, *, nms_thresh: float, detections_per_img: int) -> dict:
    """Class-wise NMS of one image's candidates, then score voting: each kept box becomes the average of its class's
    candidates overlapping it, weighted by score × exp(−(1 − IoU)² / σ) (σ = 0.025, the paper's)."""
    boxes, scores, labels = candidates["boxes"], candidates["scores"], candidates["labels"]
    keep = box_ops.batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
    if len(keep) == 0:
        return {k: v[keep] for k, v in candidates.items()}
    iou = box_iou(boxes[keep], boxes) * (labels[keep][:, None] == labels[None])
    weight = torch.exp(-((1 - iou) ** 2) / VOTING_SIGMA) * scores[None] * (iou > 0)
    voted = weight @ boxes / weight.sum(1, keepdim=True)
    return {"boxes": voted, "scores": scores[keep], "labels": labels[keep]}


def build_paa(cfg, num_classes: int) -> SamplingFreePAA:
    """PAA from our config: the head and focal loss of MODEL.FCOS, MODEL.PAA's k, weights and score voting, one
    square anchor per location (MODEL.ANCHOR_GENERATOR: 8 x stride, ratio 1, as ATSS)."""
    p = cfg.MODEL.PAA
    model = SamplingFreePAA(**one_anchor_parts(cfg, num_classes), topk=p.TOPK, box_weight=p.BOX_WEIGHT,
                            iou_weight=p.IOU_WEIGHT, score_voting=p.SCORE_VOTING)
    model.set_classification_prior(cfg.MODEL.FCOS.PRIOR_PROB)
    return model
