"""Pieces every detector adapter shares: the input transform, anchors, the prior buffer, the switches."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..distributed import mean_over_ranks
from ..mechanism import FrozenGuidedRatio, UncertaintyWeights, gradient_guided_scaling, guided_loss_scaling


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's normalise-resize-pad with two changes: a training image is resized to ``target["min_size"]``
    when the sampler chose one (instead of a size drawn from the global RNG, so runs resume and shard exactly), and
    test images use their own min/max size (torchvision reuses the training ones)."""

    def __init__(self, *, train_sizes, train_max_size, test_size, test_max_size, **kwargs):
        super().__init__(min_size=tuple(train_sizes), max_size=train_max_size, **kwargs)
        self.test_size, self.test_max_size = test_size, test_max_size

    def resize(self, image, target=None):
        if self.training and target is not None and "min_size" in target:
            sizes = ((int(target.pop("min_size")),), self.max_size)
        elif self.training:
            return super().resize(image, target)
        else:
            sizes = ((self.test_size,), self.test_max_size)
        saved = self.min_size, self.max_size
        self.min_size, self.max_size = sizes
        try:
            return super().resize(image, target)
        finally:
            self.min_size, self.max_size = saved


def build_transform(cfg) -> DetectionTransform:
    return DetectionTransform(
        train_sizes=cfg.INPUT.MIN_SIZE_TRAIN, train_max_size=cfg.INPUT.MAX_SIZE_TRAIN,
        test_size=cfg.INPUT.MIN_SIZE_TEST, test_max_size=cfg.INPUT.MAX_SIZE_TEST,
        image_mean=list(cfg.INPUT.PIXEL_MEAN), image_std=list(cfg.INPUT.PIXEL_STD),
        size_divisible=cfg.INPUT.SIZE_DIVISIBILITY,
    )


def build_anchor_generator(cfg, num_levels: int) -> AnchorGenerator:
    sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
    if len(sizes) != num_levels:
        raise ValueError(f"MODEL.ANCHOR_GENERATOR.SIZES has {len(sizes)} levels but the backbone gives {num_levels} "
                         f"(MODEL.FPN.MIN_LEVEL={cfg.MODEL.FPN.MIN_LEVEL}, TOP_BLOCK={cfg.MODEL.FPN.TOP_BLOCK})")
    octave = cfg.MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE
    per_level = tuple(tuple(s * 2 ** (i / octave) for s in level for i in range(octave)) for level in sizes)
    ratios = (tuple(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS),) * len(per_level)
    return AnchorGenerator(per_level, ratios)


@dataclass(frozen=True)
class Switches:
    """Which parts of the sampling-free mechanism are on (each defaults to MODEL.SAMPLING_FREE_ON)."""

    no_heuristic: bool
    bias_init: bool
    guided_loss: bool
    adaptive_threshold: bool
    classification_scale: float
    sync_guided_ratio: bool = False
    guided_warmup_iters: int = 0  # journal version: the guided ratio frozen after this many steps (0: never)
    learned_loss_weights: bool = False  # journal version: every loss weighted by a learned σ (with guided_loss)
    per_class_prior: bool = False  # one-stage: a π per class for the bias and the test threshold
    iou_target: bool = False  # RetinaNet with BCE: a positive's target is its predicted box's IoU, not 1
    guidance: str = "loss"  # guided scaling matches the losses' values ("loss") or their gradient mass ("gradient")

    @property
    def needs_prior(self) -> bool:
        return self.bias_init or self.adaptive_threshold

    @property
    def any(self) -> bool:
        return self.no_heuristic or self.bias_init or self.guided_loss or self.adaptive_threshold


def resolve_switches(cfg, *, default_scale: float, stage_on: bool | None = None) -> Switches:
    """The switches of one detector (or, with ``stage_on``, of one R-CNN stage: ``MODEL.SAMPLING_FREE.RPN`` /
    ``ROI_HEADS`` set, it replaces ``SAMPLING_FREE_ON`` for that stage)."""
    sf = cfg.MODEL.SAMPLING_FREE
    on = cfg.MODEL.SAMPLING_FREE_ON if stage_on is None else stage_on

    def pick(value):
        return on if value is None else value

    scale = cfg.MODEL.CLASSIFICATION_SCALE
    guided_on, bce = pick(sf.GUIDED_LOSS), pick(sf.NO_HEURISTIC)
    if sf.GUIDANCE == "gradient" and sf.GUIDED_WARMUP_ITERS > 0:
        raise ValueError("MODEL.SAMPLING_FREE.GUIDANCE gradient takes its ratio every step; it cannot be frozen "
                         "after a warm-up (GUIDED_WARMUP_ITERS > 0): set one of them")
    return Switches(bce, pick(sf.BIAS_INIT), guided_on, pick(sf.ADAPTIVE_THRESHOLD),
                    default_scale if scale is None else scale, sf.SYNC_GUIDED_RATIO,
                    sf.GUIDED_WARMUP_ITERS if guided_on else 0, bool(sf.LEARNED_LOSS_WEIGHTS and guided_on),
                    sf.PER_CLASS_PRIOR, bool(sf.IOU_TARGET and bce), sf.GUIDANCE)


def frozen_ratio(switches: Switches) -> FrozenGuidedRatio | None:
    """The state of one guided loss when its ratio is frozen after a warm-up, else None (a ratio every step)."""
    if switches.guided_warmup_iters <= 0:
        return None
    return FrozenGuidedRatio(switches.guided_warmup_iters, average=mean_over_ranks)


def guided(switches: Switches, cls_loss: torch.Tensor, reg_loss: torch.Tensor, scale: float,
           frozen: FrozenGuidedRatio | None = None, *, outputs: tuple | None = None) -> torch.Tensor:
    """``guided_loss_scaling`` with the ratio taken per process (the original) or over all processes; through
    ``frozen`` when the ratio is frozen after a warm-up. With ``switches.guidance == "gradient"``, the ratio is the
    losses' gradient masses on ``outputs`` = (classification outputs, box outputs) instead of their values
    (``gradient_guided_scaling``)."""
    reduce = mean_over_ranks if switches.sync_guided_ratio else None
    if switches.guidance == "gradient":
        if outputs is None:
            raise ValueError("MODEL.SAMPLING_FREE.GUIDANCE gradient: this head does not pass its outputs")
        return gradient_guided_scaling(cls_loss, reg_loss, *outputs, scale, reduce=reduce)
    if frozen is not None:
        return frozen(cls_loss, reg_loss, scale, reduce=reduce)
    return guided_loss_scaling(cls_loss, reg_loss, scale, reduce=reduce)


def loss_weights(switches: Switches, names) -> UncertaintyWeights | None:
    """Learned σ per loss term (``learned_loss_weights``), else None."""
    return UncertaintyWeights(names) if switches.learned_loss_weights else None


def weigh(weights: UncertaintyWeights | None, losses: dict) -> dict:
    return losses if weights is None else weights(losses)


class PriorBuffer(nn.Module):
    """Holds π inside the model (NaN until known), so a checkpoint carries what its test threshold needs; with
    ``size``, one π per class."""

    def __init__(self, size: int | None = None):
        super().__init__()
        shape = () if size is None else (size,)
        self.register_buffer("value", torch.full(shape, math.nan, dtype=torch.float64))

    def get(self):
        """π (a float), or the per-class π_c (a float64 tensor)."""
        if torch.isnan(self.value).any():
            raise RuntimeError("the model's prior π is unknown: estimate it (training) or load a checkpoint that "
                               "holds it, or set MODEL.SAMPLING_FREE.PRIOR")
        return float(self.value) if self.value.dim() == 0 else self.value.clone()

    def set(self, value) -> None:
        self.value.copy_(torch.as_tensor(value, dtype=torch.float64).expand_as(self.value))


def inside_image(anchors: torch.Tensor, image_size, straddle_thresh: float) -> torch.Tensor:
    """Anchors that do not cross the image border by more than ``straddle_thresh`` (all if it is negative)."""
    if straddle_thresh < 0:
        return torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    h, w = image_size
    t = straddle_thresh
    return (anchors[:, 0] >= -t) & (anchors[:, 1] >= -t) & (anchors[:, 2] < w + t) & (anchors[:, 3] < h + t)
