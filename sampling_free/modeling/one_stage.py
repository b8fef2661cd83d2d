"""What RetinaNet and FCOS share: π bookkeeping on a sigmoid classification head, and test-time selection with the
thresholds computed, not stored in the module.

Labels: our datasets number classes 1..C. A head either has C columns, column = label - 1 (our configs), or has a
column 0 that is never a class (torchvision's models, whose ``num_classes`` counts a background: column = label).
``label_offset`` is 1 or 0 accordingly; ``num_classes`` is always the foreground classes C, which π is per.
"""
from __future__ import annotations

import torch
from torchvision.ops import boxes as box_ops

from . import torchvision_internals as tv
from ..mechanism import adaptive_score_threshold, optimal_bias
from .contract import TestThresholds, TorchvisionThresholds, bias_report, threshold_report


class OneStagePrior(TorchvisionThresholds):
    """π, bias and thresholds of a one-stage detector whose classifier is ``head.classification_head``.

    Expects ``prior`` (a ``PriorBuffer``), ``class_prior`` (a per-class one with ``per_class_prior``, else None),
    ``switches``, ``label_offset`` and ``adaptive_nms_thresh`` (the NMS IoU with the adaptive threshold)."""

    @property
    def num_columns(self) -> int:
        return self.head.classification_head.num_classes

    @property
    def num_classes(self) -> int:
        """Foreground classes: every column, or all but column 0 when it is torchvision's background."""
        return self.num_columns - 1 + self.label_offset

    @property
    def classification_bias(self) -> torch.Tensor:
        return self.head.classification_head.cls_logits.bias

    def set_classification_prior(self, prior) -> None:
        """Every class column's bias at ``optimal_bias(π)``; ``prior``: one π, or one per foreground class (the
        head's channels are anchor-major, class-minor; a background column 0 gets the first class's)."""
        priors = torch.as_tensor(prior, dtype=torch.float64).expand(self.num_classes)
        if self.label_offset == 0:
            priors = torch.cat([priors[:1], priors])
        bias = torch.tensor([optimal_bias(float(p)) for p in priors], dtype=self.classification_bias.dtype)
        with torch.no_grad():
            self.classification_bias.copy_(bias.repeat(self.classification_bias.numel() // self.num_columns))

    def set_prior(self, prior: float, per_class=None) -> None:
        """Record the dataset prior π (and, with ``per_class_prior``, the π_c of every class); with ``bias_init`` on,
        also start the classification bias there."""
        self.prior.set(prior)
        if self.class_prior is not None:
            self.class_prior.set(prior if per_class is None else per_class)
        if self.switches.bias_init:
            self.set_classification_prior(self.class_prior.get() if self.class_prior is not None else prior)

    def adaptive_thresholds(self):
        """π · C, or with ``per_class_prior`` one per class, C · π_c (a tensor)."""
        if self.class_prior is None:
            return adaptive_score_threshold(self.prior.get(), self.num_classes)
        return (self.class_prior.get() * self.num_classes).clamp(max=1.0)

    def test_thresholds(self) -> TestThresholds:
        """The score threshold is a tensor of one per class with ``per_class_prior``."""
        if self.switches.adaptive_threshold:
            return TestThresholds(self.adaptive_thresholds(), self.adaptive_nms_thresh)
        return TestThresholds(self.score_thresh, self.nms_thresh)

    def describe_prior(self) -> dict:
        per_class = self.class_prior.get().tolist() if self.class_prior is not None else None
        thresh, nms = self.test_thresholds()
        return {"prior": self.prior.get(), "class_priors": per_class, "num_classes": self.num_classes,
                "bias": bias_report(self.switches, per_class or self.prior.get()),
                "score_threshold": threshold_report(thresh), "nms_threshold": nms}

    def column_thresholds(self, thresh, like: torch.Tensor):
        """``thresh`` (a float, or one per foreground class) laid out per head column, on ``like``'s device."""
        if not torch.is_tensor(thresh):
            return thresh
        thresh = thresh.to(like)
        return torch.cat([thresh[:1], thresh]) if self.label_offset == 0 else thresh


def select_detections(levels, *, thresh, topk: int, nms_thresh: float, detections_per_img: int, decode, image_shape,
                      label_offset: int) -> dict:
    """One image's detections from per-level (box deltas, probabilities (L, columns), ranking scores (L, columns),
    anchors): (location, class) pairs whose probability exceeds ``thresh`` (a float or one per column), the top
    ``topk`` per level by ranking score, decoded, clipped, class-wise NMS; labels ``column + label_offset``."""
    boxes_all, scores_all, labels_all = [], [], []
    for deltas, probs, ranking, anchors in levels:
        keep = torch.where((probs > thresh).flatten())[0]
        scores = ranking.flatten()[keep]
        scores, order = scores.topk(tv.topk_min(keep, topk, 0))
        keep = keep[order]
        where, columns = keep // probs.shape[-1], keep % probs.shape[-1]
        boxes_all.append(box_ops.clip_boxes_to_image(decode(deltas[where], anchors[where]), image_shape))
        scores_all.append(scores)
        labels_all.append(columns + label_offset)
    boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
    keep = box_ops.batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
