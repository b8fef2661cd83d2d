"""Prior estimation at COCO scale: a synthetic COCO-sized annotation set in memory (118k images, ~860k boxes with
COCO-like sizes and aspect ratios, no pixels), timed with our estimator (annotations only, windowed counting), against
the original's approach (decode every training image through the loader, count its anchors one image at a time),
timed on a sample of real decoded images and extrapolated.

    python benchmarks/prior_scale.py                      # both COCO configs (RetinaNet, Faster R-CNN RPN)
    python benchmarks/prior_scale.py --images 20000       # a smaller set
    python benchmarks/prior_scale.py --skip-exact         # only the sampled estimate (MODEL.SAMPLING_FREE.PRIOR_IMAGES)

Also times the sampled estimate (``--sample`` images, as ``MODEL.SAMPLING_FREE.PRIOR_IMAGES`` does it) and reports its
jackknife standard error and its distance from the exact π.
"""
from __future__ import annotations

import argparse
import functools
import resource
import time

import numpy as np
import torch

from sampling_free.config import load_config
from sampling_free.data.build import build_datasets
from sampling_free.modeling import build_model
from sampling_free.mechanism import prior_from_counts
from sampling_free.prior import count_dataset, jackknife_standard_error, padded_size, resized_size, sample_folds

CONFIGS = {"retinanet": "configs/retinanet/retinanet_R_50_FPN_1x.yaml",
           "faster_rcnn": "configs/faster_rcnn/faster_rcnn_R_50_FPN_1x.yaml"}


class SyntheticCOCO:
    """COCO train2017-like statistics: images about 640x480 (either orientation), 7.3 boxes per image on average
    (1 % without any), box areas spread like COCO's (about 41 % small, 34 % medium, 25 % large), aspect ratios
    log-normal around 1."""

    name = "synthetic_coco"

    def __init__(self, num_images: int, seed: int = 0):
        g = np.random.default_rng(seed)
        landscape = g.random(num_images) < 0.7
        long_side = g.choice([640, 640, 640, 612, 500], size=num_images)
        short_side = g.integers(360, 481, size=num_images)
        self.sizes = np.stack([np.where(landscape, short_side, long_side), np.where(landscape, long_side, short_side)],
                              1)
        counts = np.where(g.random(num_images) < 0.01, 0, g.geometric(1 / 7.3, size=num_images))
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        n = int(counts.sum())
        owner = np.repeat(np.arange(num_images), counts)
        h, w = self.sizes[owner, 0], self.sizes[owner, 1]
        sqrt_area = np.exp(g.normal(np.log(40), 1.15, size=n)).clip(2, None)
        aspect = np.exp(g.normal(0, 0.6, size=n))  # height / width
        bw = np.minimum(sqrt_area / np.sqrt(aspect), w)
        bh = np.minimum(sqrt_area * np.sqrt(aspect), h)
        x = g.random(n) * (w - bw)
        y = g.random(n) * (h - bh)
        self.boxes = np.stack([x, y, x + bw, y + bh], 1).astype(np.float32)
        self.labels = g.integers(1, 81, size=n)

    def __len__(self):
        return len(self.sizes)

    def image_size(self, i):
        return int(self.sizes[i, 0]), int(self.sizes[i, 1])

    def annotations(self, i):
        return self.boxes[self.offsets[i]:self.offsets[i + 1]], self.labels[self.offsets[i]:self.offsets[i + 1]]


def loader_approach_seconds_per_image(cfg, counter, samples: int) -> float:
    """The original's way: decode each image through the data loader, resize it, then count its anchors against
    every box. Timed on real images of the built-in dataset resized to the config's training size."""
    dataset = build_datasets(["shapes_train"], cfg, training=True)[0]
    start = time.perf_counter()
    for i in range(samples):
        image, target = dataset[i]
        h, w = image.shape[1:]
        nh, nw = resized_size(h, w, cfg.INPUT.MIN_SIZE_TRAIN[0], cfg.INPUT.MAX_SIZE_TRAIN)
        torch.nn.functional.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)
        scale = torch.tensor([nw / w, nh / h] * 2)
        counter.count(padded_size(nh, nw, 32), (nh, nw), target["boxes"] * scale, target["labels"])
    return (time.perf_counter() - start) / samples


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=118_287)
    p.add_argument("--sample", type=int, default=10_000, help="images of the sampled estimate (0: skip it)")
    p.add_argument("--skip-exact", action="store_true", help="do not count every image")
    p.add_argument("--samples", type=int, default=100, help="images decoded to time the loader approach")
    p.add_argument("--detectors", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--workers", type=int, default=0, help="counting threads (0: torch's thread count, 1: serial)")
    args = p.parse_args()
    start = time.perf_counter()
    data = SyntheticCOCO(args.images)
    print(f"synthetic COCO: {len(data)} images, {len(data.boxes)} boxes, built in {time.perf_counter() - start:.1f}s")
    print(f"threads: {torch.get_num_threads()}, counting workers: {args.workers or torch.get_num_threads()}")
    print("| config | every image: s | π | sampled: images, s | sampled π ± s.e. | loader approach: s/image "
          "| extrapolated to the set |\n|---|---|---|---|---|---|---|")
    for name in args.detectors:
        cfg = load_config(CONFIGS[name], values={"MODEL.BACKBONE.WEIGHTS": ""})
        counter = build_model(cfg, 80).prior_counter()
        count = functools.partial(count_dataset, [data], counter, min_sizes=cfg.INPUT.MIN_SIZE_TRAIN,
                                  max_size=cfg.INPUT.MAX_SIZE_TRAIN, size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY,
                                  hflip_prob=cfg.INPUT.HFLIP_PROB, workers=args.workers)
        exact, exact_s = float("nan"), float("nan")
        if not args.skip_exact:
            start = time.perf_counter()
            counts = count()
            exact_s = time.perf_counter() - start
            exact = prior_from_counts(counts["foreground_per_class"].sum(), counts["background"], counter.num_classes)
        sampled = "— | —"
        if 0 < args.sample < len(data):
            start = time.perf_counter()
            counts = count(folds=sample_folds(len(data), args.sample))
            seconds = time.perf_counter() - start
            prior = prior_from_counts(counts["foreground_per_class"].sum(), counts["background"], counter.num_classes)
            error = jackknife_standard_error(counts["per_fold"], counter.num_classes,
                                             sampled_fraction=args.sample / len(data))
            sampled = f"{args.sample}, {seconds:.1f} | {prior:.4g} ± {error:.2g}"
        per_image = loader_approach_seconds_per_image(cfg, counter, args.samples)
        print(f"| {name} | {exact_s:.1f} | {exact:.4g} | {sampled} | {per_image:.3f} | "
              f"{per_image * len(data) / 60:.0f} min |", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory of this process: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
