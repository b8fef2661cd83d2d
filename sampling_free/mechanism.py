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

``gradient_guided_scaling`` (an experiment, off) takes guided scaling's ratio from the gradients the two losses
send into their outputs rather than from the losses' values. Two options follow the original's later (journal)
code rather than the paper: ``FrozenGuidedRatio`` takes the ratio
of guided scaling every step only for a warm-up, then keeps it fixed; ``UncertaintyWeights`` weighs every loss term
by a learned σ. Both are off unless configured.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["optimal_bias", "guided_loss_scaling", "gradient_guided_scaling", "gradient_mass", "adaptive_score_threshold",
           "prior_from_counts", "class_priors_from_counts", "FrozenGuidedRatio", "UncertaintyWeights"]


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


def class_priors_from_counts(foreground_per_class, num_background: float) -> list[float]:
    """π_c per class (an extension beyond the paper, for long-tailed data): the probability that one non-ignored
    anchor is foreground *of class c*, ``N_fg,c / (N_fg + N_bg)``. Their sum is the foreground fraction, C times
    the shared π. A class with no foreground anchor gets half an anchor's worth, so its bias stays finite."""
    total = float(sum(foreground_per_class)) + float(num_background)
    if total <= 0 or sum(foreground_per_class) <= 0:
        raise ValueError("cannot estimate per-class priors without foreground anchors")
    return [max(float(n), 0.5) / total for n in foreground_per_class]


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


GRADIENT_MASS_SCALE = 2.0 ** 12


def gradient_mass(loss: torch.Tensor, outputs) -> torch.Tensor:
    """``Σ |∂loss / ∂outputs|`` over every element of ``outputs`` (a tensor or a sequence of them), without touching
    any parameter's gradient: the total pull a loss puts on the head outputs it is computed from. The loss is
    multiplied by 2^12 for the backward pass and the sum divided by it (exact in float32): under AMP the outputs
    are float16, and a negative anchor's share of a mean over 10^5 anchors would otherwise round to 0."""
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    if not loss.requires_grad:
        return loss.detach().new_zeros(())
    grads = torch.autograd.grad(loss * GRADIENT_MASS_SCALE, outputs, retain_graph=True, allow_unused=True)
    zero = loss.detach().new_zeros((), dtype=torch.float32)
    return sum((g.float().abs().sum() for g in grads if g is not None), zero) / GRADIENT_MASS_SCALE


def gradient_guided_scaling(cls_loss: torch.Tensor, reg_loss: torch.Tensor, cls_outputs, reg_outputs,
                            scale: float = 1.0, eps: float = 1e-12, *, reduce=None) -> torch.Tensor:
    """``scale * cls_loss * stopgrad(G_reg / G_cls)``, G the gradient mass (``gradient_mass``) each loss puts on the
    outputs it reads: the classification logits for ``cls_loss``, the box outputs for ``reg_loss``.

    Beyond the paper, an experiment (issue "No knob to tune"): guided scaling matches loss *values*, so its
    classification gradient depends on the box loss's form (smooth-L1 with β 1/9, GIoU and L1 differ by factors
    at the same error) and falls as the boxes improve; matching the gradient each loss sends into its outputs does
    not. After the scaling, the classification loss pulls on its logits with ``scale`` times the total force the
    box loss pulls on the boxes. ``reduce`` maps the detached pair ``[G_reg, G_cls]`` (e.g. to its mean over
    processes) before the ratio is taken."""
    values = torch.stack([gradient_mass(reg_loss, reg_outputs), gradient_mass(cls_loss, cls_outputs)]).detach()
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


class FrozenGuidedRatio(nn.Module):
    """Guided scaling with the ratio frozen after a warm-up (the original's journal code, for dense heads).

    For the first ``warmup_iters`` training steps the ratio ``stopgrad(L_reg / L_cls)`` is taken every step, as in
    ``guided_loss_scaling``; from then on it is fixed. The original froze the ratio of the warm-up's last step,
    averaged over processes: one batch's value, which moves with the batch's number of objects. We freeze the mean
    over the second half of the warm-up steps (then over processes, by ``average``): the same quantity with the
    batch noise averaged out, and past the first steps, where the loss is still far from its working range.
    The state lives in buffers, so a checkpoint resumes with the same frozen value."""

    def __init__(self, warmup_iters: int, *, average=None):
        super().__init__()
        if warmup_iters < 1:
            raise ValueError(f"warmup_iters must be >= 1, got {warmup_iters}")
        self.warmup_iters, self.average = warmup_iters, average
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("ratio_sum", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("ratio_count", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("frozen", torch.tensor(math.nan, dtype=torch.float64))

    def forward(self, cls_loss: torch.Tensor, reg_loss: torch.Tensor, scale: float = 1.0, eps: float = 1e-12, *,
                reduce=None) -> torch.Tensor:
        if not torch.isnan(self.frozen):
            return cls_loss * (self.frozen.to(cls_loss.dtype) * scale)
        values = torch.stack([reg_loss.detach(), cls_loss.detach()])
        if reduce is not None:
            values = reduce(values)
        ratio = values[0] / values[1].clamp(min=eps)
        self.steps += 1
        if self.steps > self.warmup_iters // 2:
            self.ratio_sum += ratio.double()
            self.ratio_count += 1
        if self.steps >= self.warmup_iters:
            mean = self.ratio_sum / self.ratio_count
            self.frozen.fill_(float(self.average(mean.reshape(1))[0]) if self.average is not None else float(mean))
        return cls_loss * (ratio * scale)


class UncertaintyWeights(nn.Module):
    """Every loss term L_i weighted by a learned σ_i: ``L_i / (2 σ_i²)``, plus ``Σ log σ_i`` as its own term
    (Kendall et al.'s homoscedastic uncertainty weighting, as the original's journal code applied it after guided
    scaling). σ starts at 1, so every term starts at half its value; at equilibrium σ_i² = L_i and each weighted
    term is 1/2. The log term is ``Σ log |σ_i|``: the original's ``log Π σ_i`` while every σ_i > 0, and still defined
    should one cross 0."""

    def __init__(self, names):
        super().__init__()
        self.names = list(names)
        self.sigmas = nn.Parameter(torch.ones(len(self.names)))

    def forward(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weighted = {name: losses[name] / (2 * self.sigmas[k] ** 2) for k, name in enumerate(self.names)}
        weighted.update({name: value for name, value in losses.items() if name not in weighted})
        weighted["loss_uncertainty"] = torch.log(self.sigmas.abs()).sum()
        return weighted
