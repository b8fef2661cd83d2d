"""PAA (probabilistic anchor assignment with IoU prediction; Kim & Lee, ECCV 2020), baseline or sampling-free.

PAA is ATSS's detector (FCOS's towers on one square anchor per location, anchor deltas decoded for a GIoU loss)
with two changes, both in this file, following the authors' code (kkhoot/PAA, ``PAALossComputation``):

* **assignment from the model's own losses**: every anchor first goes to the object it overlaps most if their IoU
  is at least 0.1 (torchvision's ``Matcher``, each object keeping its best anchors: ``match_by_iou``); each such
  anchor is scored by the loss it would have as that object's positive (its classification loss for the object's
  class + the GIoU loss of its predicted box -- the paper's score with λ 1); per object, the ``k`` anchors of
  lowest score on each pyramid level are its candidates (``candidates_by_loss``); a two-component Gaussian
  mixture is fitted to each object's candidate scores (all objects of a batch at once, on the device:
  ``fit_two_gaussians``), and the candidates up to the boundary -- the candidate of the low-loss component with
  the highest likelihood under the mixture -- are positives (``separate``); everything else is background;
* **IoU prediction**: the third branch (FCOS's centerness) is trained, on positives, to the IoU of the predicted box
  with its object (BCE, × ``IOU_WEIGHT``), and detections rank by sqrt(classification × predicted IoU); the GIoU
  loss of each positive is weighted by that IoU and divided by their sum (× ``BOX_WEIGHT``), as the authors'.
  Optional score voting (``MODEL.PAA.SCORE_VOTING``; on in the authors' COCO config) moves each kept box to the
  average of its overlapping candidates, weighted by their scores and exp(−(1 − IoU)² / 0.025).

Baseline: focal loss. Sampling-free, exactly where it changes ATSS (``SamplingFreeFCOS``): BCE over every anchor
(PAA ignores none), guided to the GIoU loss, test threshold π · C. **How π is counted**: PAA's positives depend on
the model's losses, which do not exist before training; π is counted with ``atss_assign`` (the top-k-by-IoU anchors
of each level, split by ATSS's model-free IoU statistic) -- a stand-in the original avoided by fixing π (3e-3 on
COCO). The trainer logs PAA's actual positives per image (``num_pos``) beside it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss
from torchvision.ops import boxes as box_ops

from . import torchvision_internals as tv
from ..distributed import mean_over_ranks
from .atss import atss_assign, one_anchor_parts
from .common import guided, loss_weights, weigh
from .fcos import SamplingFreeFCOS
from .prior_rules import paired_iou

LOSS_NAMES = ("loss_paa_cls", "loss_paa_giou", "loss_paa_iou")
VOTING_SIGMA = 0.025
MATCH_IOU = 0.1  # an anchor overlapping no object by this much is background from the start (the authors' 0.1)


def match_by_iou(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(A,) the object each anchor is a possible positive of, -1 none: its most-overlapping object at IoU >= 0.1,
    and every object's best anchors (ties included) even below -- torchvision's ``Matcher`` with low-quality
    matches, the authors' first step."""
    return tv.Matcher(MATCH_IOU, MATCH_IOU, allow_low_quality_matches=True)(box_iou(boxes, anchors))


def candidates_by_loss(owner: torch.Tensor, score: torch.Tensor, num_objects: int, num_per_level: list[int],
                       topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each object, the ``topk`` anchors of lowest ``score`` on each level among those ``owner`` gives it:
    (G, K) anchor indices and (G, K) whether each entry is one (a level may hold fewer than ``topk``). Equal scores
    go to the lower anchor index."""
    objects = torch.arange(num_objects, device=owner.device)[:, None]
    picked, real, start = [], [], 0
    for count in num_per_level:
        mine = owner[None, start:start + count] == objects  # (G, count)
        table = torch.where(mine, score[None, start:start + count], torch.full_like(mine, math.inf, dtype=score.dtype))
        order = torch.sort(table, dim=1, stable=True).indices[:, :min(topk, count)]
        picked.append(order + start)
        real.append(mine.gather(1, order))
        start += count
    return torch.cat(picked, 1), torch.cat(real, 1)


def fit_two_gaussians(x: torch.Tensor, valid: torch.Tensor, *, iterations: int = 100, tolerance: float = 1e-3,
                      eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """EM for one two-component 1-D Gaussian mixture per row of ``x`` (G, K), over the entries ``valid`` marks
    (every row needs one), every row at once and each stopping on its own, as scikit-learn's ``GaussianMixture``
    that PAA uses: components start at the row's smallest and largest value with unit variance and equal weights;
    after each E- and M-step a row stops once its mean log-likelihood moved by less than ``tolerance`` (1e-3), at
    most ``iterations`` times; variances get ``eps`` added (``reg_covar``). Returns (posterior of the low component
    (G, K), log-likelihood of each entry under the mixture (G, K)), both under the final parameters."""
    big = torch.finfo(x.dtype).max
    mean = torch.stack([torch.where(valid, x, big).min(1).values, torch.where(valid, x, -big).max(1).values], 1)
    var, weight = torch.ones_like(mean), torch.full_like(mean, 0.5)
    mask = valid.to(x.dtype)
    count = mask.sum(1).clamp(min=1)
    running = torch.ones(len(x), 1, dtype=torch.bool, device=x.device)

    def e_step():
        # log w_c N(x | mean_c, var_c) of both components, and their log-sum (two terms: no logsumexp needed)
        a, b = (torch.log(weight[:, c:c + 1]) - 0.5 * torch.log(2 * math.pi * var[:, c:c + 1])
                - 0.5 * (x - mean[:, c:c + 1]) ** 2 / var[:, c:c + 1] for c in (0, 1))
        log_mix = torch.maximum(a, b) + torch.log1p(torch.exp(-(a - b).abs()))
        return torch.exp(a - log_mix), log_mix

    previous = None
    for _ in range(iterations):
        low, log_mix = e_step()
        score = (log_mix * mask).sum(1, keepdim=True) / count[:, None]
        resp = torch.stack([low * mask, (1 - low) * mask], 2)  # (G, K, 2)
        total = resp.sum(1).clamp(min=eps)
        new_mean = (resp * x[:, :, None]).sum(1) / total
        new_var = (resp * (x[:, :, None] - new_mean[:, None]) ** 2).sum(1) / total + eps
        weight = torch.where(running, total / count[:, None], weight)
        mean, var = torch.where(running, new_mean, mean), torch.where(running, new_var, var)
        if previous is not None:
            running = running & ((score - previous).abs() >= tolerance)
            if not bool(running.any()):
                break
        previous = score
    return e_step()


def separate(losses: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """PAA's positives among each row's candidates (G, K): fit the mixture, take as boundary the candidate of the
    low-loss component with the highest mixture likelihood, keep every candidate whose loss is at most its. As the
    authors: a row with one candidate keeps it, and a row whose low component holds none keeps all (for recall)."""
    low_posterior, log_mix = fit_two_gaussians(losses, valid)
    in_low = valid & (low_posterior > 0.5)
    likelihood = torch.where(in_low, log_mix, torch.full_like(log_mix, -math.inf))
    boundary = losses.gather(1, likelihood.argmax(1, keepdim=True))
    return valid & ((losses <= boundary) | ~in_low.any(1, keepdim=True))


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
        rows, scores, masks = [], [], []
        for i, t in enumerate(targets):
            if t["boxes"].numel() == 0:
                continue
            owner = match_by_iou(anchors[i], t["boxes"])
            score = torch.full(owner.shape, math.inf, dtype=cls_logits.dtype, device=owner.device)
            k = (owner >= 0).nonzero().squeeze(1)
            onehot = torch.zeros(len(k), cls_logits.shape[-1], dtype=cls_logits.dtype, device=owner.device)
            onehot[torch.arange(len(k)), t["labels"][owner[k]] - self.label_offset] = 1.0
            score[k] = (self.classification_loss(cls_logits[i, k], onehot).sum(1)
                        + generalized_box_iou_loss(pred_boxes[i, k], t["boxes"][owner[k]], reduction="none"))
            cand, real = candidates_by_loss(owner, score, len(t["boxes"]), num_per_level, self.topk)  # (G, K)
            keep = real.any(1)  # an object whose best anchors all went to others has no candidate
            rows.append((i, cand[keep], torch.arange(len(cand), device=owner.device)[keep]))
            scores.append(torch.where(real, score[cand], torch.zeros_like(score[cand]))[keep])
            masks.append(real[keep])
        if not any(len(s) for s in scores):
            return matched
        positive = separate(torch.cat(scores), torch.cat(masks)).split([len(s) for s in scores])
        for (i, cand, objects), pos in zip(rows, positive):
            matched[i, cand[pos]] = objects[:, None].expand_as(cand)[pos]  # anchors are exclusive to one object
        return matched

    def compute_loss(self, targets, head_outputs, anchors, num_anchors_per_level):
        cls_logits, deltas, iou_logits = (head_outputs[k] for k in ("cls_logits", "bbox_regression", "bbox_ctrness"))
        anchors = torch.stack(anchors)
        pred = torch.stack([self.decode(d, a) for d, a in zip(deltas, anchors)])
        matched = self.assign_batch(cls_logits.detach(), pred.detach(), anchors, targets, num_anchors_per_level)
        fg, num_fg, cls_targets, gt_boxes = self.targets_of(matched, targets, cls_logits)
        loss_cls = self.classification_loss(cls_logits, cls_targets).sum() / num_fg
        if fg.any():
            target_iou = paired_iou(pred[fg].detach(), gt_boxes[fg])
            # each positive's GIoU weighted by its box's IoU, over their sum (averaged over processes), as the authors'
            iou_sum = mean_over_ranks(target_iou.sum().detach()).clamp(min=1e-6)
            loss_box = self.box_weight * (generalized_box_iou_loss(pred[fg], gt_boxes[fg], reduction="none")
                                          * target_iou).sum() / iou_sum
            loss_iou = self.iou_weight * F.binary_cross_entropy_with_logits(
                iou_logits.squeeze(2)[fg], target_iou, reduction="sum") / num_fg
        else:  # zero, connected to the graph
            loss_box, loss_iou = deltas.sum() * 0.0, iou_logits.sum() * 0.0
        self.last_stats = {"num_pos": float(fg.sum()), "cls_unscaled": float(loss_cls.detach())}
        if self.switches.guided_loss:
            loss_cls = guided(self.switches, loss_cls, loss_box, self.switches.classification_scale, self.frozen_ratio,
                              outputs=(cls_logits, deltas))
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
