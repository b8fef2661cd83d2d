"""The sampling-free mechanism: three plain functions, no model or data imports.

Chen et al., "Is Sampling Heuristics Necessary in Training Deep Object Detectors?" (arXiv 1909.04868) replace
focal loss / RPN+RoI undersampling / hard-negative mining by

1. ``optimal_bias`` -- start the classification bias at the prior, so the first predictions already match the
   foreground-background imbalance instead of producing a huge loss from millions of easy negatives;
2. ``guided_loss_scaling`` -- rescale the classification loss every step to the magnitude of the regression loss,
   so the (many, easy) negatives can neither swamp nor vanish from the gradient;
3. ``adaptive_score_threshold`` -- test-time score threshold that follows the prior rather than a fixed 0.05,
   because a classifier trained on every anchor is calibrated to the true (tiny) foreground rate.

Every detector adapter in ``sampling_free.modeling`` calls these functions and nothing else of the method.
"""
from __future__ import annotations

import math

import torch

__all__ = ["optimal_bias", "guided_loss_scaling", "adaptive_score_threshold", "prior_from_counts"]


def prior_from_counts(num_foreground: float, num_background: float, num_classes: int) -> float:
    """π: the probability that one non-ignored training anchor is foreground *for one given class*.

    The foreground fraction is shared evenly by the ``num_classes`` sigmoid outputs (C foreground classes for
    RetinaNet/FCOS, 1 for the class-agnostic RPN objectness), as in the original implementation.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    total = num_foreground + num_background
    if total <= 0 or num_foreground <= 0:
        raise ValueError(
            f"cannot estimate the prior from {num_foreground} foreground and {num_background} background "
            "samples: the training set has no matched anchors (no annotations, or anchors that never fit them)"
        )
    return float(num_foreground) / float(total) / num_classes


def optimal_bias(prior: float) -> float:
    """The logit bias ``b = -log((1 - π) / π)``, i.e. ``sigmoid(b) == π``."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"the prior must lie in (0, 1), got {prior}")
    return -math.log((1.0 - prior) / prior)


def guided_loss_scaling(
    cls_loss: torch.Tensor, reg_loss: torch.Tensor, scale: float = 1.0, eps: float = 1e-12, *, reduce=None
) -> torch.Tensor:
    """``scale * cls_loss * stopgrad(reg_loss / cls_loss)``.

    The returned *value* equals ``scale * reg_loss``; its *gradient* is ``scale * (reg/cls) * d cls_loss``. Any
    constant normaliser of ``cls_loss`` (mean vs sum, division by the number of positives) therefore cancels: only
    the regression normalisation sets the classification gradient's magnitude. ``reg_loss`` back-propagates only
    through its own term. With no positives ``reg_loss`` is 0 and so is the result -- still connected to the graph,
    so distributed gradient reduction sees every parameter. ``reduce``, when given, maps the detached pair
    ``[reg_loss, cls_loss]`` before the ratio is taken (e.g. to its mean over processes, for one ratio per step).
    """
    values = torch.stack([reg_loss.detach(), cls_loss.detach()])
    if reduce is not None:
        values = reduce(values)
    ratio = values[0] / values[1].clamp(min=eps)
    return cls_loss * (ratio * scale)


def adaptive_score_threshold(prior: float, num_classes: int) -> float:
    """Test-time per-class score threshold: the foreground fraction ``π · C``.

    A classifier trained on every anchor with bias ``optimal_bias(π)`` is calibrated to the training-set
    foreground rate; a score below the rate at which *any* class is foreground carries no evidence of an object.
    The original multiplied by ``C + 1`` (counting background as a class although π was divided by C; spec bug B4):
    we use ``C``, a factor ``C / (C + 1)`` lower (0.988 on COCO).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return min(1.0, prior * num_classes)
