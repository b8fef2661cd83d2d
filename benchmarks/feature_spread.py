"""Does each backbone output still depend on the image? A collapsed layer (saturated, or dead) gives the same map for
every input, and the head levels above it then predict the same boxes everywhere.

    python benchmarks/feature_spread.py CHECKPOINT [CHECKPOINT ...] [--images 4]

For the first ``--images`` images of the checkpoint's test set, in evaluation mode, per backbone output: its shape,
mean, the standard deviation over images (averaged over channels and positions; 0 means collapsed) and the share
of exact zeros. Found the SSDlite quickstart's collapse under frozen BatchNorm (docs/results.md).
"""
from __future__ import annotations

import argparse

import torch

from sampling_free.api import Detector
from sampling_free.data.build import build_datasets


def spread(checkpoint: str, count: int) -> list[dict]:
    detector = Detector.from_checkpoint(checkpoint)
    model = detector.model.eval()
    dataset = build_datasets(detector.cfg.DATASETS.TEST[:1], detector.cfg, training=False)[0]
    images = [dataset[k][0] for k in range(count)]
    with torch.no_grad():
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
    return [{"output": name, "shape": tuple(f.shape[1:]), "mean": float(f.mean()),
             "std over images": float(f.std(0).mean()), "zeros": float((f == 0).float().mean())}
            for name, f in features.items()]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--images", type=int, default=4)
    args = p.parse_args()
    print("| checkpoint | output | shape | mean | std over images | zeros |")
    print("|---|---|---|---|---|---|")
    for checkpoint in args.checkpoints:
        for r in spread(checkpoint, args.images):
            print(f"| {checkpoint} | {r['output']} | {r['shape']} | {r['mean']:.3f} | {r['std over images']:.4f} | "
                  f"{r['zeros']:.1%} |")


if __name__ == "__main__":
    main()
