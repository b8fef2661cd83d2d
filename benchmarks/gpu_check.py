"""GPU check: training-step time and memory of the R-50-FPN RetinaNet and Faster R-CNN COCO configs, ours (baseline
and sampling-free) against plain torchvision with identical settings, in float32 and bfloat16 autocast, on the
built-in dataset resized to COCO scale. Paired like step_time.py: in every round each variant runs the same batches
in turn, and each variant's time is reported relative to torchvision's in the same round. Before timing, every
variant runs every batch once, so lazy CUDA set-up and cuDNN autotuning are paid by no one variant alone (a first
version that timed variants one after another charged all of it to whichever ran first). Meant for one H100/H200
in about two minutes:

    python benchmarks/gpu_check.py                          # defaults: cuda, 800 px, batch 8, 5 rounds x 4 steps
    python benchmarks/gpu_check.py --device cpu --size 128 --batch 1 --rounds 1 --steps 1   # a smoke run

Output: one Markdown table, then one JSON object per row.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import CONFIGS, build_variants, load_batches, paired_times, time_steps  # noqa: E402

from sampling_free.config import load_config  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def step_peak_gib(model, batches, *, dtype, device) -> float:
    """Memory a training step allocates on top of what is already resident (every variant's weights)."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    resident = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    time_steps(model, batches, dtype=dtype)
    return (torch.cuda.max_memory_allocated(device) - resident) / 2**30


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=800)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    p.add_argument("--detectors", nargs="+", default=["retinanet", "faster_rcnn"], choices=sorted(CONFIGS))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; {args.size} px, batch {args.batch}, "
          f"{args.rounds} rounds x {args.steps} steps, paired")
    print("| detector | variant | dtype | s/iter (median) | images/s | ratio to torchvision (median, min-max) | "
          "step peak GiB |\n|---|---|---|---|---|---|---|")
    rows = []
    for detector in args.detectors:
        overrides = {"MODEL.BACKBONE.WEIGHTS": "", "INPUT.MIN_SIZE_TRAIN": [args.size],
                     "INPUT.MAX_SIZE_TRAIN": int(args.size * 1333 / 800), "DATASETS.TRAIN": ["shapes_train"],
                     "SOLVER.IMS_PER_BATCH": args.batch, "DATALOADER.NUM_WORKERS": 0, "MODEL.DEVICE": args.device}
        batches, num_classes = load_batches(load_config(CONFIGS[detector], values=overrides), args.steps + 1, device)
        variants = build_variants(detector, [], overrides, num_classes, device)
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            for model in variants.values():
                time_steps(model, batches, dtype=dtype)  # untimed: CUDA/cuDNN set-up for every batch shape
            times = paired_times(variants, batches, rounds=args.rounds, dtype=dtype)
            for variant, model in variants.items():
                ratios = [v / t for v, t in zip(times[variant], times["torchvision"])]
                row = {"detector": detector, "variant": variant, "dtype": dtype_name, "device": name,
                       "size": args.size, "batch": args.batch, "seconds": times[variant], "ratio": ratios,
                       "step_peak_gib": step_peak_gib(model, batches, dtype=dtype, device=device)}
                rows.append(row)
                median = statistics.median(times[variant])
                print(f"| {detector} | {variant} | {dtype_name} | {median:.3f} | {args.batch / median:.1f} | "
                      f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | "
                      f"{row['step_peak_gib']:.2f} |", flush=True)
        del variants, batches
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
