"""The one contract every sampling-free detector keeps -- our five families and every converted torchvision model.

The trainer, ``prior.py``, the evaluator, the Python API, ``convert``, export and the benchmarks rely on this and on
nothing else of a detector; what lies behind it (heads, losses, matchers) stays in the family's own file. This file
answers "what does the engine need from a detector".
"""
from __future__ import annotations

import copy
from typing import Any, NamedTuple, Protocol, TypedDict, runtime_checkable

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


class TestThresholds(NamedTuple):
    """What inference keeps: scores above ``score`` (a float, or a tensor of one per class with a per-class prior)
    and, per class, boxes that NMS at IoU ``nms`` does not suppress (R-CNNs: the box head's)."""
    score: Any
    nms: float


class PriorDescription(TypedDict):
    """What a detector does with π, as ``prior.json`` and the log record it; the same keys for every family."""
    prior: float  # the π the model holds
    class_priors: list[float] | None  # π_c per class with PER_CLASS_PRIOR, else None
    num_classes: int  # the C that π is per (1 for an R-CNN, whose π is the RPN's)
    bias: float | list[float] | None  # the bias set from π (R-CNN: the RPN objectness; SSD: the softmax's
    # background and foreground biases); None with bias_init off
    score_threshold: float | list[float]  # the test score threshold(s) inference applies now
    nms_threshold: float


@runtime_checkable
class SamplingFreeDetector(Protocol):
    """torchvision's detector contract (``model(images, targets)`` -> loss dict in training, a list of
    ``{"boxes", "scores", "labels"(, "masks")}`` in eval, labels in the model's own numbering), plus:"""

    switches: Switches  # which parts of the mechanism are on
    prior: PriorBuffer  # π, in every checkpoint
    transform: Any  # torchvision's GeneralizedRCNNTransform: π is counted at the sizes it resizes images to
    has_masks: bool  # whether detections carry "masks" (exported as a fourth output)
    export_caveat: str | None  # what a traced export of this model cannot do, if anything

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

    def describe_prior(self) -> PriorDescription:
        """What the model does with π, as it will do it: the bias it set (None when ``bias_init`` is off) and the
        test thresholds it applies. ``prior.json`` and the log record this."""

    def test_thresholds(self) -> TestThresholds:
        """The thresholds the next inference applies, computed now (never written into module state by
        ``forward``): sampling-free's (from π) with ``adaptive_threshold`` on, else the baseline's."""

    def set_test_thresholds(self, *, score: float | None = None, nms: float | None = None) -> None:
        """Change the baseline's test thresholds (the sampling-free threshold follows π, set by ``set_prior``)."""

    def exportable(self):
        """An eval copy on the CPU that ``torch.jit`` and ONNX can trace; the model itself is left as it is."""


def is_sampling_free(model) -> bool:
    return isinstance(model, SamplingFreeDetector)


def eval_copy(model):
    """An eval copy of ``model`` on the CPU (what ``exportable`` gives where nothing needs swapping)."""
    return copy.deepcopy(model).eval().cpu()


class TorchvisionThresholds:
    """``set_test_thresholds`` and ``exportable`` of a detector whose baseline thresholds are torchvision's
    ``score_thresh`` and ``nms_thresh`` attributes (RetinaNet, FCOS, ATSS, SSD); no masks, nothing lost in export."""

    has_masks = False
    export_caveat = None

    def set_test_thresholds(self, *, score: float | None = None, nms: float | None = None) -> None:
        if score is not None:
            self.score_thresh = score  # SSD: its setter keeps the baseline's beside the adaptive one
        if nms is not None:
            self.nms_thresh = nms

    def exportable(self):
        return eval_copy(self)


def bias_report(switches: Switches, prior) -> float | list[float] | None:
    """``optimal_bias`` of π (or of each π_c) when ``bias_init`` is on, else None: the bias ``set_prior`` sets."""
    if not switches.bias_init:
        return None
    if isinstance(prior, (list, tuple)):
        return [optimal_bias(p) for p in prior]
    return optimal_bias(prior)


def threshold_report(thresh) -> float | list[float]:
    return thresh.tolist() if torch.is_tensor(thresh) else float(thresh)
