"""The rules π is counted with: which anchors (or locations) a detector labels foreground or background for a
given image, and the fast way to count them for a whole dataset.

``prior.py`` turns a dataset into counts through a detector's rule (``model.prior_counter()``); the rules live here,
beside the detectors whose matchers they follow: ``AnchorPriorCounter`` (RetinaNet, the RPN: anchors and a
``Matcher``), ``SSDPriorCounter``, ``AssignmentPriorCounter`` (FCOS's and ATSS's own assignments), and
``count_images``.

``count_images`` counts anchors for a whole dataset at once, without comparing every box to every anchor.

``AnchorPriorCounter.count`` matches one image's boxes against all of its anchors (about 120k at COCO scale), which
for COCO's 118k images x 2 flips is ~10^11 IoUs. Here each box is compared only with the anchors that can reach the
background threshold: for an anchor shape of area ``a`` and a box of area ``b``, IoU >= t needs ``min/max(a, b) >= t``
and a centre offset |dy| <= (h_a + h_b)/2 - t * max(a, b) / min(w_a, w_b), which bounds the rows; in each row
the overlap height is known, which fixes the columns exactly, so each (box, shape) pair visits little more than the
anchors that do reach IoU >= t (about 70 per box at COCO scale for RetinaNet). All boxes of many images go through in one vectorised pass per anchor shape;
an anchor matched by several boxes is counted once. The result equals the matcher's (tests compare it with the
brute-force counter), including low-quality matches, which are found among the same windows and, for the rare box
whose best anchor lies outside them, against all of its image's anchors.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from .common import inside_image


@contextlib.contextmanager
def _in_eval_mode(module: nn.Module):
    """Run ``module`` in eval mode and give every submodule its own mode back: counting π must not touch the model
    (a BatchNorm in training mode counts every forward in ``num_batches_tracked``, its averaging weight when
    ``momentum`` is None)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class GridPriorCounter:
    """Shared part of the prior-counting rules: the locations/anchors a detector has for a padded input."""

    def __init__(self, *, backbone: nn.Module, anchor_generator: AnchorGenerator, num_classes: int):
        self.backbone, self.anchor_generator, self.num_classes = backbone, anchor_generator, num_classes
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, list[int]]] = {}
        self._grids: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._lock = threading.Lock()  # π is counted in threads; one of them at a time sets the backbone's mode

    def locations(self, padded: tuple[int, int]) -> tuple[torch.Tensor, list[int]]:
        """(anchors of the whole pyramid, number per level), cached per padded size."""
        if padded not in self._cache:
            with self._lock:
                if padded not in self._cache:
                    self._count_locations(padded)
        return self._cache[padded]

    def _count_locations(self, padded: tuple[int, int]) -> None:
        with torch.no_grad(), _in_eval_mode(self.backbone):  # a zero-image batch gives every level's grid size
            features = list(self.backbone(torch.zeros(0, 3, *padded)).values())
            grids = [torch.empty(1, 0, *f.shape[-2:]) for f in features]
            anchors = self.anchor_generator(ImageList(torch.empty(1, 0, *padded), [padded]), grids)[0]
        per_level = [g.shape[-2] * g.shape[-1] * self.anchor_generator.num_anchors_per_location()[k]
                     for k, g in enumerate(grids)]
        self._grids[padded] = [tuple(g.shape[-2:]) for g in grids]
        self._cache[padded] = (anchors, per_level)  # last: another thread reads the cache without the lock

    def level_grids(self, padded: tuple[int, int]) -> list[tuple[int, int]]:
        """(height, width) of every level's grid for ``padded``."""
        self.locations(padded)
        return self._grids[padded]

    def anchors(self, padded: tuple[int, int]) -> torch.Tensor:
        return self.locations(padded)[0]


class AnchorPriorCounter(GridPriorCounter):
    """The prior-counting rule of an anchor-based head: its anchors for a padded input, labelled by its matcher.

    Foreground = matched anchors (IoU >= high threshold, plus low-quality best matches when the matcher allows
    them), background = IoU < low threshold; anchors in between are ignored, as in the loss, and so are anchors
    crossing the image border by more than ``straddle_thresh`` when it is >= 0 (the RPN's visibility rule)."""

    def __init__(self, *, backbone: nn.Module, anchor_generator: AnchorGenerator, matcher, num_classes: int,
                 class_agnostic: bool = False, straddle_thresh: float = -1):
        super().__init__(backbone=backbone, anchor_generator=anchor_generator, num_classes=num_classes)
        self.matcher, self.class_agnostic, self.straddle_thresh = matcher, class_agnostic, straddle_thresh

    def count(self, padded, image_size, boxes: torch.Tensor, labels: torch.Tensor):
        anchors = self.anchors(tuple(padded))
        keep = inside_image(anchors, image_size, self.straddle_thresh)
        if boxes.numel() == 0:
            return np.zeros(self.num_classes), float(keep.sum())
        # match against every anchor, then drop the straddling ones: exactly what the RPN loss does
        matched = self.matcher(box_iou(boxes, anchors))[keep]
        fg = matched >= 0
        classes = torch.zeros_like(labels) if self.class_agnostic else labels - 1
        per_class = torch.bincount(classes[matched[fg]], minlength=self.num_classes)
        return per_class.double().numpy(), float((matched == self.matcher.BELOW_LOW_THRESHOLD).sum())

    def count_many(self, passes) -> tuple[np.ndarray, np.ndarray]:
        """The weighted counts (foreground passes x classes, background per pass) of many (padded, image_size,
        boxes, labels, weight) passes sharing one padded size, by ``count_images`` (windows instead of
        every box against every anchor)."""
        return count_images(self, passes, low=self.matcher.low_threshold, high=self.matcher.high_threshold,
                            allow_low_quality=self.matcher.allow_low_quality_matches,
                            straddle=self.straddle_thresh, num_classes=self.num_classes,
                            class_agnostic=self.class_agnostic)

    def describe(self) -> dict:
        return {"anchor_sizes": [list(s) for s in self.anchor_generator.sizes],
                "aspect_ratios": [list(r) for r in self.anchor_generator.aspect_ratios],
                "fg_iou": self.matcher.high_threshold, "bg_iou": self.matcher.low_threshold,
                "low_quality_matches": self.matcher.allow_low_quality_matches, "num_classes": self.num_classes,
                "straddle_thresh": self.straddle_thresh}


class SSDPriorCounter(AnchorPriorCounter):
    """SSD's rule: its default boxes for the (fixed-size) input, labelled by its ``SSDMatcher`` (IoU >= threshold,
    plus each object's best box), every other box background. Counted image by image: the windowed count is for
    ``AnchorGenerator`` grids."""

    count_many = None

    def describe(self) -> dict:
        g = self.anchor_generator
        return {"rule": "ssd", "aspect_ratios": [list(r) for r in g.aspect_ratios], "scales": list(g.scales),
                "steps": g.steps, "clip": g.clip, "iou": self.matcher.high_threshold, "num_classes": self.num_classes}


class AssignmentPriorCounter(GridPriorCounter):
    """π's counting rule for detectors that assign locations to boxes by a function of their own (FCOS's
    ``fcos.fcos_assign``, ATSS's ``atss.atss_assign``, which their losses use too): the locations for a padded
    input, each foreground or background (these detectors ignore none). ``parameter``: the assignment's own
    (FCOS's centre-sampling radius, ATSS's top-k)."""

    def __init__(self, *, backbone, anchor_generator, num_classes: int, assign, parameter: float, rule: str):
        super().__init__(backbone=backbone, anchor_generator=anchor_generator, num_classes=num_classes)
        self.assign, self.parameter, self.rule = assign, parameter, rule

    def count(self, padded, image_size, boxes, labels):
        anchors, per_level = self.locations(tuple(padded))
        matched = self.assign(anchors, boxes, per_level, self.parameter)
        fg = matched >= 0
        per_class = torch.bincount(labels[matched[fg]] - 1, minlength=self.num_classes)
        return per_class.double().numpy(), float((~fg).sum())

    def describe(self) -> dict:
        return {"rule": self.rule, "sizes": [list(s) for s in self.anchor_generator.sizes],
                "aspect_ratios": [list(r) for r in self.anchor_generator.aspect_ratios],
                "parameter": self.parameter, "num_classes": self.num_classes}


# Windows are drawn for a threshold a hair below the true one, so that float rounding in their geometry cannot drop
# an anchor whose IoU equals the threshold. That case is common, not contrived: the search for a box's best anchors
# sets the threshold to the best IoU found on one shape, and another shape of the same area (1:2 and 2:1 anchors)
# ties it exactly. The IoU test itself uses the true threshold.
SLACK = 1 - 1e-4


class ShapeGrid:
    """One anchor shape on one level of one padded input size: its grid, stride, offset in the anchor list."""

    __slots__ = ("base", "stride", "grid", "offset", "step")

    def __init__(self, base, stride, grid, offset, step):
        self.base, self.stride, self.grid, self.offset, self.step = base, stride, grid, offset, step


def shape_grids(counter, padded) -> tuple[list[ShapeGrid], int]:
    """The anchor layout torchvision's AnchorGenerator produces for ``padded``: per level, positions major and
    shapes minor; anchor (level, i, j, a) = (j * stride_x, i * stride_y) + rounded base box a."""
    anchors, _ = counter.locations(padded)
    out, offset = [], 0
    for (gh, gw), cell in zip(counter.level_grids(padded), counter.anchor_generator.cell_anchors):
        stride = (padded[0] // gh, padded[1] // gw)
        for a, base in enumerate(cell.tolist()):
            out.append(ShapeGrid(base, stride, (gh, gw), offset + a, len(cell)))
        offset += gh * gw * len(cell)
    assert offset == anchors.shape[0]
    return out, offset


def _enumerate(lo, hi):
    """(owner, value) for every integer in [lo[k], hi[k]], all k at once (a cumulative sum of run starts: much
    faster than ``repeat_interleave`` on the CPU)."""
    n = (hi - lo + 1).clamp(min=0)
    ends = torch.cumsum(n, 0)
    total = int(ends[-1]) if len(n) else 0
    nonempty = torch.where(n > 0)[0]
    marks = torch.zeros(total, dtype=torch.int32)
    marks[(ends - n)[nonempty]] = 1
    owner = nonempty[torch.cumsum(marks, 0, dtype=torch.int32) - 1]
    return owner, lo[owner] + (torch.arange(total, dtype=torch.int32) - (ends - n).int()[owner])


def _candidates(g: ShapeGrid, boxes, idx, t, dy):
    """(anchor id, box index, IoU) for the anchors of shape ``g`` that reach IoU >= t[k] with box ``idx[k]`` (and
    overlap it at all).

    Rows are those whose centre lies within ``dy`` of the box centre; within a row, the overlap height ``oy`` is
    known, so IoU >= t needs an overlap width of at least ``t / (1 + t) * (area_a + area_b) / oy``: an exact column
    range, widened by a hair so that rounding cannot drop an anchor (the IoU test below decides)."""
    x1o, y1o, x2o, y2o = g.base
    sy, sx = g.stride
    gh, gw = g.grid
    wa, ha = x2o - x1o, y2o - y1o
    acx, acy = (x1o + x2o) / 2, (y1o + y2o) / 2
    b = boxes[idx]
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    box_area = w * h  # box_iou's own arithmetic for the box area
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    i0 = torch.clamp(torch.ceil((cy - dy - acy) / sy), min=0).int()
    i1 = torch.clamp(torch.floor((cy + dy - acy) / sy), max=gh - 1).int()
    row_pair, i = _enumerate(i0, i1)
    overlap = (h[row_pair] + ha) / 2 - (i * sy + acy - cy[row_pair]).abs()
    oy = torch.clamp(torch.minimum(overlap, h[row_pair].clamp(max=ha)), min=0)
    loose = t * SLACK  # the geometry only: the IoU test below uses the true threshold
    need = (loose / (1 + loose) * (wa * ha + box_area))[row_pair]
    half = (w[row_pair] + wa) / 2
    width_needed = need / oy.clamp(min=1e-12)
    dx = half - width_needed
    keep = (oy > 0) & (width_needed <= w[row_pair].clamp(max=wa) * (1 + 1e-3) + 1e-3)
    row_pair, i, dx, half = row_pair[keep], i[keep], dx[keep], half[keep]
    dx = dx + 1e-3 * half + 1e-3
    rx = cx[row_pair]
    j0 = torch.clamp(torch.ceil((rx - dx - acx) / sx), min=0).int()
    j1 = torch.clamp(torch.floor((rx + dx - acx) / sx), max=gw - 1).int()
    # per row: the overlap height and IoU's denominator before the overlap (box_iou's float32 arithmetic, so that
    # a tie with the threshold falls as in the matcher); per anchor only the overlap width is left to compute
    ay1 = (i * sy).float() + y1o
    rb = b[row_pair]
    ih = (torch.minimum(ay1 + ha, rb[:, 3]) - torch.maximum(ay1, rb[:, 1])).clamp_(min=0)
    areas = wa * ha + box_area[row_pair]
    row, j = _enumerate(j0, j1)
    ax1 = (j * sx).float() + x1o
    iw = (torch.minimum(ax1 + wa, rb[:, 2][row]) - torch.maximum(ax1, rb[:, 0][row])).clamp_(min=0)
    inter = iw * ih[row]
    iou = inter / (areas[row] - inter)
    hit = torch.where((iou > 0) & (iou >= t[row_pair][row]))[0]
    row = row[hit]
    return g.offset + (i[row].long() * gw + j[hit].long()) * g.step, idx[row_pair[row]], iou[hit]


def count_images(counter, passes, *, low: float, high: float, allow_low_quality: bool, straddle: float,
                 num_classes: int, class_agnostic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Weighted foreground-per-class (passes x classes) and background (passes) counts of each of ``passes``:
    (padded, image_size, boxes, labels, weight) tuples that share one padded size. Equal to the matcher's counts
    (tests/test_prior.py)."""
    grids, total = shape_grids(counter, passes[0][0])
    anchors = counter.anchors(passes[0][0])
    counts = torch.tensor([len(p[2]) for p in passes], dtype=torch.int64)
    boxes = torch.from_numpy(np.concatenate([p[2] for p in passes]).astype(np.float32)).reshape(-1, 4)
    labels = torch.from_numpy(np.concatenate([p[3] for p in passes]).astype(np.int64))
    owner = torch.repeat_interleave(torch.arange(len(passes)), counts)
    sizes = torch.tensor([p[1] for p in passes], dtype=torch.float32).reshape(-1, 2)
    weights = torch.tensor([p[4] for p in passes], dtype=torch.float64)
    valid = torch.from_numpy(_valid_anchor_counts(grids, sizes, straddle))
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    b_area = bw * bh
    found = []

    def windows(g: ShapeGrid, idx, t):
        """Candidates of shape ``g`` for boxes ``idx`` that can reach IoU >= t (t per box or one number)."""
        x1o, y1o, x2o, y2o = g.base
        wa, ha = x2o - x1o, y2o - y1o
        w, h, area = bw[idx], bh[idx], b_area[idx]
        big = torch.clamp(area, min=wa * ha)
        reach = t * SLACK * big
        dx = (wa + w) / 2 - reach / torch.clamp(h, max=ha)
        dy = (ha + h) / 2 - reach / torch.clamp(w, max=wa)
        ok = (torch.clamp(area, max=wa * ha) >= reach) & (dx >= 0) & (dy >= 0)
        if ok.any():
            t = torch.as_tensor(t, dtype=torch.float32).expand(len(idx))
            found.append(_candidates(g, boxes, idx[ok], t[ok], dy[ok]))

    # a box's IoU with an anchor shape is at most min/max of the two areas (``bound``, all shapes at once)
    areas = torch.tensor([(g.base[2] - g.base[0]) * (g.base[3] - g.base[1]) for g in grids])
    bound = torch.minimum(b_area[:, None], areas) / torch.maximum(b_area[:, None], areas)
    for k, g in enumerate(grids):  # pass 1: every window that can hold an IoU >= low (module doc)
        windows(g, torch.where(bound[:, k] >= low * SLACK)[0], low)
    if allow_low_quality:
        # pass 2: a box whose best anchor is below ``low`` still matches it. Search its most promising shape in
        # full, which gives a floor for the best IoU, then every shape whose bound can beat the floor, with windows
        # drawn for that floor.
        best = torch.zeros(len(boxes))
        for _, box, iou in found:
            best.scatter_reduce_(0, box, iou, reduce="amax")
        need = torch.where((best < low) & (b_area > 0))[0]
        if len(need):
            bound = bound[need]
            first = bound.argmax(1)
            start = len(found)
            for k, g in enumerate(grids):
                windows(g, need[first == k], 0.0)
            floor = best.clone()
            for _, box, iou in found[start:]:
                floor.scatter_reduce_(0, box, iou, reduce="amax")
            floor = floor[need]
            for k, g in enumerate(grids):
                sel = (bound[:, k] >= floor * SLACK) & (first != k)
                if sel.any():
                    windows(g, need[sel], floor[sel])
    if not found:
        return np.zeros((len(passes), num_classes)), (valid * weights).numpy()
    ids, box_of, iou_of = (torch.cat(parts) for parts in zip(*found))
    uniq, inverse = torch.unique(owner[box_of] * total + ids, return_inverse=True)  # one anchor of one pass
    pass_of, anchor_of = uniq // total, uniq % total
    max_iou = torch.zeros(len(uniq)).scatter_reduce(0, inverse, iou_of, reduce="amax", include_self=False)
    is_max = iou_of == max_iou[inverse]
    arg = torch.full((len(uniq),), len(boxes), dtype=torch.int64).scatter_reduce(
        0, inverse[is_max], box_of[is_max], reduce="amin")  # ties: the first box, as torch.max
    foreground = max_iou >= high
    if allow_low_quality:  # each box's best anchors (ties included) are foreground whatever their IoU
        box_best = torch.zeros(len(boxes)).scatter_reduce(0, box_of, iou_of, reduce="amax", include_self=False)
        foreground[inverse[iou_of == box_best[box_of]]] = True
        # a low-quality match below ``low`` takes the class of its best box among *all* boxes of its image, and a
        # box may overlap it by less than ``low`` without having had it in its windows: recompute those few exactly
        redo = torch.where(foreground & (max_iou < low))[0]
        if len(redo):
            anchor_box = anchors[anchor_of[redo]]
            first = (torch.cumsum(counts, 0) - counts)[pass_of[redo]]
            n = counts[pass_of[redo]]
            pair, box = _enumerate(first, first + n - 1)  # every box of each anchor's image
            iou = paired_iou(anchor_box[pair], boxes[box])
            top = torch.zeros(len(redo)).scatter_reduce(0, pair, iou, reduce="amax", include_self=False)
            tie = iou == top[pair]
            arg[redo] = torch.full((len(redo),), len(boxes), dtype=torch.int64).scatter_reduce(
                0, pair[tie], box[tie], reduce="amin")
    seen = _inside(anchors[anchor_of], sizes[pass_of], straddle)
    classes = torch.zeros_like(labels) if class_agnostic else labels - 1
    chosen = foreground & seen
    fg = torch.zeros(len(passes) * num_classes, dtype=torch.float64).index_add_(
        0, pass_of[chosen] * num_classes + classes[arg[chosen]], weights[pass_of[chosen]])
    not_background = (max_iou >= low) | foreground
    per_pass = torch.zeros(len(passes), dtype=torch.float64).index_add_(
        0, pass_of[not_background & seen], torch.ones(int((not_background & seen).sum()), dtype=torch.float64))
    return fg.reshape(len(passes), num_classes).numpy(), ((valid - per_pass) * weights).numpy()


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i] for every i (``box_iou`` would build the whole n x n matrix)."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def _inside(anchor, size, straddle):
    if straddle < 0:
        return torch.ones(len(anchor), dtype=torch.bool)
    h, w = size[:, 0], size[:, 1]
    return (anchor[:, 0] >= -straddle) & (anchor[:, 1] >= -straddle) & (anchor[:, 2] < w + straddle) & \
        (anchor[:, 3] < h + straddle)


def _valid_anchor_counts(grids, sizes, straddle) -> np.ndarray:
    """Per pass: how many anchors the loss sees (all, or those inside the image by the straddle rule)."""
    total = np.zeros(len(sizes))
    for g in grids:
        gh, gw = g.grid
        if straddle < 0:
            total += gh * gw
            continue
        sy, sx = g.stride
        x1o, y1o, x2o, y2o = g.base
        h, w = sizes[:, 0].numpy(), sizes[:, 1].numpy()
        nx = _count_positions(gw, sx, x1o, x2o, w, straddle)
        ny = _count_positions(gh, sy, y1o, y2o, h, straddle)
        total += nx * ny
    return total


def _count_positions(n, stride, lo, hi, extent, straddle):
    """#j in [0, n) with j*stride + lo >= -straddle and j*stride + hi < extent + straddle."""
    first = np.maximum(0, np.ceil((-straddle - lo) / stride))
    last = np.minimum(n - 1, np.ceil((extent + straddle - hi) / stride) - 1)
    return np.maximum(0, last - first + 1)

