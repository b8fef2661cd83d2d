"""The one contract every sampling-free detector keeps -- our five families and every converted torchvision model.

The trainer, ``prior.py``, the evaluator, the Python API, ``convert`` and export rely on this and on nothing else
of a detector; what lies behind it (heads, losses, matchers) stays in the family's own file.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..mechanism import optimal_bias
from .common import PriorBuffer, Switches


class PriorCounter(Protocol):
    """A detector's rule for π (``modeling/prior_rules.py``): its anchors for a padded input, labelled by its
    matcher. ``num_classes`` is the C that π is per (1 for a class-agnostic RPN)."""

    num_classes: int

    def count(self, padded, image_size, boxes: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, float]:
        ...

    def describe(self) -> dict:
        ...


@runtime_checkable
class SamplingFreeDetector(Protocol):
    """torchvision's detector contract (``model(images, targets)`` -> loss dict in training, a list of
    ``{"boxes", "scores", "labels"(, "masks")}`` in eval, labels in the model's own numbering), plus:"""

    switches: Switches  # which parts of the mechanism are on
    prior: PriorBuffer  # π, in every checkpoint

    @property
    def num_classes(self) -> int:
        """Foreground classes the detector outputs (labels 1..C)."""

    @property
    def training_stats(self) -> dict[str, float]:
        """Diagnostics of the latest training batch (guided ratio, #positives, ...), logged by the trainer."""

    def prior_counter(self) -> PriorCounter:
        """The rule π is counted with."""

    def set_prior(self, prior: float, per_class=None) -> None:
        """Record π (and per-class π_c where supported); with ``bias_init`` on, start the bias there."""

    def describe_prior(self) -> dict:
        """What the model does with π, as it will do it: the bias it set (None when ``bias_init`` is off) and the
        test score threshold(s) it applies. ``prior.json`` and the log record this."""


def is_sampling_free(model) -> bool:
    return isinstance(model, SamplingFreeDetector)


def bias_report(switches: Switches, prior) -> float | list[float] | None:
    """``optimal_bias`` of π (or of each π_c) when ``bias_init`` is on, else None: the bias ``set_prior`` sets."""
    if not switches.bias_init:
        return None
    if isinstance(prior, (list, tuple)):
        return [optimal_bias(p) for p in prior]
    return optimal_bias(prior)


def threshold_report(thresh) -> float | list[float]:
    return thresh.tolist() if torch.is_tensor(thresh) else float(thresh)
