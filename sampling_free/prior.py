"""Estimating π from the training annotations with the detector's own assignment rule -- no image is decoded.

For every training image the annotation file gives its size and boxes. We apply the training resize rule (each
``INPUT.MIN_SIZE_TRAIN`` with equal weight, the max-size cap, padding to ``SIZE_DIVISIBILITY``) and horizontal
flipping (weights ``1 - p`` and ``p``), so the counts are the *expected* counts of one training epoch rather than
one random draw of them. The detector supplies the rule (``model.prior_counter()``): which anchors (or locations)
exist for a padded input, and how many of them its matcher labels foreground per class and background. Images
without objects count as all background, as they do in the loss. Under torch.distributed every process counts a
shard and the sums are all-reduced, so no process group is needed on one device and no cache file is raced.

The result is cached under a key of everything it depends on (the annotations it reads, the rule's parameters,
input sizes, flip probability), so a second run with the same setting reads it in milliseconds.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .distributed import gather_objects, is_main, rank, world_size
from .files import write_json_atomic
from .mechanism import prior_from_counts

logger = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: counts exact for best anchors tied across shapes of equal area (COCO anchors)
ENV_CACHE = "SAMPLING_FREE_CACHE"


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The training resize of torchvision's GeneralizedRCNNTransform (interpolate with a recomputed scale)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(math.floor(height * scale)), int(math.floor(width * scale))


def padded_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    if divisor <= 1:
        return height, width
    return int(math.ceil(height / divisor) * divisor), int(math.ceil(width / divisor) * divisor)


def annotations_digest(dataset) -> str:
    """sha256 of exactly what the count reads (image sizes, boxes, labels), whatever the annotation format: an
    edited annotation changes the key, a re-saved file with the same content does not."""
    h = hashlib.sha256()
    for index in range(len(dataset)):
        boxes, labels = dataset.annotations(index)
        h.update(np.asarray(dataset.image_size(index), dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(boxes, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def cache_dir(configured: str = "") -> Path:
    if configured:
        return Path(configured)
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]) / "priors"
    return Path.home() / ".cache" / "sampling-free" / "priors"


def count_dataset(datasets, counter, *, min_sizes, max_size: int, size_divisibility: int, hflip_prob: float,
                  rank: int = 0, world_size: int = 1, chunk: int = 10000, folds=None, workers: int = 0,
                  fixed_size: tuple[int, int] | None = None) -> dict:
    """Expected foreground (per class) and background counts over one pass of ``datasets`` (this shard).

    Every (image, training size, flip) is a weighted "pass"; passes sharing a padded size go to the counter in
    chunks when it can count many at once (``count_many``), else one by one (``count``). ``folds``: count only
    these images (lists of 0-based positions in the concatenation of ``datasets``), shared out over the ranks,
    with each fold's counts also returned (``per_fold``).

    ``workers`` threads (0: torch's thread count) count chunks side by side, torch single-threaded meanwhile: a chunk
    is many small tensor operations, which spread over cores better as whole chunks than op by op. Chunks are
    added in submission order, so the result does not depend on ``workers``; memory grows with it (one chunk each)."""
    num_classes = counter.num_classes
    fold_of = None if folds is None else {int(p): k for k, f in enumerate(folds) for p in f}
    num_folds = 1 if folds is None else len(folds)
    fg = np.zeros((num_folds, num_classes), dtype=np.float64)
    bg = np.zeros(num_folds, dtype=np.float64)
    images, empty = 0, 0
    flips = [(flip, weight) for flip, weight in ((False, 1.0 - hflip_prob), (True, hflip_prob)) if weight > 0]
    pending: dict[tuple[int, int], list] = {}

    workers = workers or torch.get_num_threads()
    count_many = getattr(counter, "count_many", None)
    pool = ThreadPoolExecutor(workers) if workers > 1 and count_many is not None else None
    running: deque = deque()

    def add(fold, per_class, background):
        np.add.at(fg, fold, per_class)
        np.add.at(bg, fold, background)

    def count_group(group):
        fold = np.array([g[-1] for g in group])
        if count_many is not None:
            per_class, background = count_many([g[:-1] for g in group])
        else:
            per_class, background = np.zeros((len(group), num_classes)), np.zeros(len(group))
            for k, (pad, size, boxes, labels, weight, _) in enumerate(group):
                c, b = counter.count(pad, size, torch.from_numpy(boxes), torch.from_numpy(labels))
                per_class[k], background[k] = weight * c, weight * b
        return fold, per_class, background

    def flush(padded):
        group = pending.pop(padded)
        if pool is None:
            return add(*count_group(group))
        running.append(pool.submit(count_group, group))
        while len(running) > workers:  # at most ``workers`` chunks counted at once
            add(*running.popleft().result())

    threads = torch.get_num_threads()
    if pool is not None:
        torch.set_num_threads(1)
    try:
        position, taken = -1, -1
        for dataset in datasets:
            for index in range(len(dataset)):
                position += 1
                if fold_of is not None and position not in fold_of:
                    continue
                taken += 1
                if taken % world_size != rank:
                    continue
                height, width = dataset.image_size(index)
                boxes, labels = dataset.annotations(index)
                images += 1
                empty += int(len(boxes) == 0)
                fold = 0 if fold_of is None else fold_of[position]
                for min_size in min_sizes:  # (a fixed size, as SSD's, ignores the aspect ratio)
                    new_h, new_w = fixed_size or resized_size(height, width, min_size, max_size)
                    scaled = boxes * np.array([new_w / width, new_h / height] * 2, dtype=np.float32)
                    padded = padded_size(new_h, new_w, size_divisibility)
                    for flip, weight in flips:
                        b = scaled.copy()
                        if flip:
                            b[:, [0, 2]] = new_w - scaled[:, [2, 0]]
                        group = pending.setdefault(padded, [])
                        group.append((padded, (new_h, new_w), b, labels, weight / len(min_sizes), fold))
                        if len(group) >= chunk:
                            flush(padded)
        for padded in list(pending):
            flush(padded)
        while running:
            add(*running.popleft().result())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(threads)

    result = {"foreground_per_class": fg.sum(0), "background": float(bg.sum()), "images": images,
              "empty_images": empty}
    if folds is not None:
        result["per_fold"] = [{"foreground_per_class": fg[k], "background": float(bg[k])} for k in range(num_folds)]
    return result


def _sum_over_ranks(counts: dict) -> dict:
    """Add up the shards' counts (every process ends with the same totals)."""
    shards = gather_objects(counts)
    total = {"foreground_per_class": sum(c["foreground_per_class"] for c in shards),
             "background": sum(c["background"] for c in shards), "images": sum(c["images"] for c in shards),
             "empty_images": sum(c["empty_images"] for c in shards)}
    if "per_fold" in counts:
        total["per_fold"] = [{key: sum(c["per_fold"][k][key] for c in shards) for key in ("foreground_per_class",
                                                                                           "background")}
                             for k in range(len(counts["per_fold"]))]
    return total


@dataclass(frozen=True)
class CountingSetting:
    """How training images reach the detector (resize rule, padding, flips), which images are counted, where the
    cache lives: everything but the rule and the data that π depends on."""
    min_sizes: tuple[int, ...]
    max_size: int
    size_divisibility: int
    hflip_prob: float = 0.5
    sample_images: int = 0  # > 0: count a fixed random subset of this many images
    cache_dir: str = ""
    detector: str = ""  # a name for the cache key
    fixed_size: tuple[int, int] | None = None  # (height, width) every image is resized to (SSD), if any


def setting_from_transform(transform, **kwargs) -> CountingSetting:
    """The resize rule of a detector's own transform (torchvision's ``GeneralizedRCNNTransform`` or ours)."""
    fixed = getattr(transform, "fixed_size", None)
    return CountingSetting(min_sizes=tuple(transform.min_size), max_size=transform.max_size,
                           size_divisibility=transform.size_divisible,
                           fixed_size=None if fixed is None else (int(fixed[1]), int(fixed[0])), **kwargs)


def setting_from_config(cfg, model) -> CountingSetting:
    """The model's resize rule, with the config's flips, sample and cache."""
    return setting_from_transform(model.transform, hflip_prob=cfg.INPUT.HFLIP_PROB,
                                  sample_images=cfg.MODEL.SAMPLING_FREE.PRIOR_IMAGES,
                                  cache_dir=cfg.MODEL.SAMPLING_FREE.PRIOR_CACHE_DIR,
                                  detector=cfg.MODEL.META_ARCHITECTURE)


def prior_with_counts(model, datasets, setting: CountingSetting, *, class_names=None) -> dict:
    """π and the counts behind it, from the cache when the same setting was counted before. What the model then
    does with π (bias, thresholds) is the model's to report (``describe_prior``)."""
    counter = model.prior_counter()
    depends_on = {
        "version": CACHE_VERSION,
        "detector": setting.detector or type(model).__name__,
        "rule": counter.describe(),
        "datasets": [{"name": d.name, "annotations_sha256": annotations_digest(d)} for d in datasets],
        "min_sizes": list(setting.min_sizes), "max_size": setting.max_size,
        "size_divisibility": setting.size_divisibility, "hflip_prob": setting.hflip_prob,
    }
    if setting.fixed_size is not None:
        depends_on["fixed_size"] = list(setting.fixed_size)
    total_images = sum(len(d) for d in datasets)
    sample = setting.sample_images
    if 0 < sample < total_images:
        depends_on["sampled_images"] = sample
    key = hashlib.sha256(json.dumps(depends_on, sort_keys=True).encode()).hexdigest()[:20]
    cache_file = cache_dir(setting.cache_dir) / f"{key}.json"
    if cache_file.exists():
        result = json.loads(cache_file.read_text())
        result["source"] = f"cache {cache_file}"
        return result

    start = time.perf_counter()
    count = functools.partial(
        count_dataset, datasets, counter, min_sizes=setting.min_sizes, max_size=setting.max_size,
        size_divisibility=setting.size_divisibility, hflip_prob=setting.hflip_prob, rank=rank(),
        world_size=world_size(), fixed_size=setting.fixed_size)
    sampled = "sampled_images" in depends_on
    counts = _sum_over_ranks(count(folds=sample_folds(total_images, sample) if sampled else None))
    standard_error = jackknife_standard_error(counts["per_fold"], counter.num_classes,
                                              sampled_fraction=sample / total_images) if sampled else None
    num_fg = float(counts["foreground_per_class"].sum())
    prior = prior_from_counts(num_fg, counts["background"], counter.num_classes)
    names = class_names or [str(i + 1) for i in range(len(counts["foreground_per_class"]))]
    result = {
        "prior": prior,
        "num_classes": counter.num_classes,
        "num_foreground": num_fg,
        "num_background": counts["background"],
        "foreground_fraction": num_fg / (num_fg + counts["background"]),
        "foreground_per_class": dict(zip(names, counts["foreground_per_class"].tolist())),
        "images": counts["images"],
        "images_without_objects": counts["empty_images"],
        "images_in_dataset": total_images,
        "prior_standard_error": standard_error,
        "seconds": round(time.perf_counter() - start, 3),
        "depends_on": depends_on,
        "cache_key": key,
    }
    if is_main():  # the only writer; every process computed the same totals
        write_json_atomic(cache_file, result)
    result["source"] = "estimated"
    return result


def sample_folds(total: int, sample: int, *, folds: int = 10) -> list[np.ndarray]:
    """A fixed random subset of ``sample`` image positions out of ``total``, dealt into ``folds`` parts (seed 0,
    whatever the training seed, so the cached estimate does not depend on it)."""
    chosen = np.random.default_rng(0).choice(total, size=sample, replace=False)
    return [np.sort(chosen[k::folds]) for k in range(min(folds, sample))]


def jackknife_standard_error(folds: list[dict], num_classes: int, *, sampled_fraction: float = 0.0) -> float:
    """Delete-one-fold jackknife standard error of π = fg / (fg + bg) / C from per-fold counts, with the
    finite-population correction sqrt(1 - n/N) for a sample drawn without replacement."""
    fg = np.array([f["foreground_per_class"].sum() for f in folds], dtype=np.float64)
    bg = np.array([f["background"] for f in folds], dtype=np.float64)
    k = len(folds)
    if k < 2:
        return float("nan")
    leave_out = (fg.sum() - fg) / (fg.sum() - fg + bg.sum() - bg) / num_classes
    variance = (k - 1) / k * ((leave_out - leave_out.mean()) ** 2).sum()
    return float(math.sqrt(variance * (1.0 - sampled_fraction)))


def config_prior(value: float) -> dict:
    return {"prior": value, "source": "config MODEL.SAMPLING_FREE.PRIOR"}
