"""Inference time: trained run folders side by side, or our untrained detectors against plain torchvision.

Trained runs (the question the class-adaptive threshold raises: does a threshold near π, far below 0.05, make
post-processing slower?) — every run gets the same pre-loaded validation images, in alternated rounds:

    python benchmarks/inference_time.py --runs output/compare/x/baseline/seed0 output/compare/x/sampling_free/seed0

Against torchvision (R-50-FPN, random init, identical sizes and test settings; with random weights few boxes pass
any threshold, so this measures the network and the wrapper, not post-processing):

    python benchmarks/inference_time.py --detector retinanet --size 256 --batch 2

Reports the median seconds per image, each variant's ratio to the first (median, min-max over rounds), and the mean
number of detections per image.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from sampling_free.config import load_config
from sampling_free.config.loader import with_values
from sampling_free.data.build import build_datasets, build_test_loader
from sampling_free.engine.evaluator import model_from_checkpoint
from sampling_free.modeling import build_model
from step_time import CONFIGS, torchvision_model


@torch.no_grad()
def time_inference(model, batches) -> tuple[float, float]:
    """(seconds per image, detections per image) over ``batches``."""
    model.eval()
    start, images, detections = time.perf_counter(), 0, 0
    for batch in batches:
        outputs = model(batch)
        images += len(batch)
        detections += sum(len(o["boxes"]) for o in outputs)
    return (time.perf_counter() - start) / images, detections / images


def load_images(cfg, count: int, batch: int) -> tuple[list[list[torch.Tensor]], object]:
    """(batches of the first ``count`` test images, the test dataset)."""
    dataset = build_datasets(cfg.DATASETS.TEST[:1], cfg, training=False)[0]
    cfg = with_values(cfg, {"TEST.IMS_PER_BATCH": batch, "DATALOADER.NUM_WORKERS": 0})
    batches = []
    for images, _ in build_test_loader(cfg, dataset):
        batches.append(images)
        if sum(len(b) for b in batches) >= count:
            break
    return batches, dataset


def trained_runs(run_dirs: list[str], count: int, batch: int) -> tuple[dict, list]:
    models, cfg = {}, None
    for run in run_dirs:
        cfg = load_config(Path(run) / "config.yaml", values={"MODEL.BACKBONE.WEIGHTS": ""})
        label = "/".join(Path(run).parts[-3:])
        models[label] = model_from_checkpoint(cfg, Path(run) / "model_final.pth", torch.device("cpu"))
    return models, load_images(cfg, count, batch)[0]


def against_torchvision(detector: str, size: int, count: int, batch: int) -> tuple[dict, list]:
    overrides = {"MODEL.BACKBONE.WEIGHTS": "", "INPUT.MIN_SIZE_TEST": size, "INPUT.MAX_SIZE_TEST": size,
                 "DATASETS.TEST": ["shapes_val"], "MODEL.DEVICE": "cpu"}
    cfg = load_config(CONFIGS[detector], values=overrides)
    batches, dataset = load_images(cfg, count, batch)
    num_classes = dataset.num_classes
    torch.manual_seed(0)
    models = {"torchvision": torchvision_model(cfg, num_classes, training=False)}
    for name, free in (("ours baseline", False), ("ours sampling-free", True)):
        torch.manual_seed(0)
        model = build_model(load_config(CONFIGS[detector], values={**overrides, "MODEL.SAMPLING_FREE_ON": free}),
                            num_classes)
        model.set_prior(1e-3)
        models[name] = model
    return models, batches


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--runs", nargs="+", metavar="OUTPUT_DIR", help="trained run folders (model_final.pth)")
    mode.add_argument("--detector", choices=sorted(CONFIGS))
    p.add_argument("--size", type=int, default=256, help="test size for --detector")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    if args.runs:
        models, batches = trained_runs(args.runs, args.images, args.batch)
    else:
        models, batches = against_torchvision(args.detector, args.size, args.images, args.batch)
    seconds = {name: [] for name in models}
    detections = {}
    for _ in range(args.rounds):
        for name, model in models.items():
            time_inference(model, batches[:1])  # warm-up, not timed
            s, d = time_inference(model, batches)
            seconds[name].append(s)
            detections[name] = d
    first = next(iter(models))
    report = {"mode": "runs" if args.runs else args.detector, "images": sum(len(b) for b in batches),
              "batch": args.batch, "rounds": args.rounds, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "results": {}}
    print(f"{report['images']} images, batch {args.batch}, {args.rounds} rounds, {torch.get_num_threads()} threads")
    print(f"| variant | s/image (median) | ratio to {first} (median, min-max) | detections/image |\n|---|---|---|---|")
    for name, values in seconds.items():
        ratios = [v / f for v, f in zip(values, seconds[first])]
        report["results"][name] = {"seconds_per_image": values, "ratio": ratios, "detections": detections[name]}
        print(f"| {name} | {statistics.median(values):.4f} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}) | {detections[name]:.1f} |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
