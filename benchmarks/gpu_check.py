"""GPU check: training speed and memory of the R-50-FPN RetinaNet and Faster R-CNN COCO configs, ours (sampling-free
and baseline) against plain torchvision with identical settings, in float32 and bfloat16, on the built-in dataset
resized to COCO scale. Meant for one H100/H200 in under 8 minutes:

    python benchmarks/gpu_check.py                          # defaults: cuda, 800 px, batch 8, 60 timed iterations
    python benchmarks/gpu_check.py --device cpu --size 256 --batch 2 --iters 2 --warmup 1   # a smoke run

Output (stable, for comparing cards): one Markdown table row per variant, then one JSON object per variant.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import CONFIGS, torchvision_model  # noqa: E402

from sampling_free.config import load_config  # noqa: E402
from sampling_free.data.build import build_datasets, build_train_loader  # noqa: E402
from sampling_free.modeling import build_model  # noqa: E402


def batches(cfg, count, device):
    datasets = build_datasets(cfg.DATASETS.TRAIN, cfg, training=True)
    stream = iter(build_train_loader(cfg, datasets))
    out = []
    for _ in range(count):
        images, targets = next(stream)
        out.append(([im.to(device) for im in images],
                    [{k: v.to(device) for k, v in t.items() if torch.is_tensor(v)} for t in targets]))
    return out, datasets[0].num_classes


def run(model, data, *, dtype, device, warmup: int) -> dict:
    model.train().to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step, (images, targets) in enumerate(data):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        with autocast:
            losses = model(images, [dict(t) for t in targets])
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / (len(data) - warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"s_per_iter": seconds, "images_per_s": len(data[0][0]) / seconds, "peak_gib": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=800)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=60, help="timed iterations per variant")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--detectors", nargs="+", default=["retinanet", "faster_rcnn"], choices=sorted(CONFIGS))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; {args.size} px, batch {args.batch}, "
          f"{args.iters} timed + {args.warmup} warm-up iterations per variant")
    print("| detector | implementation | dtype | s/iter | images/s | peak GiB |\n|---|---|---|---|---|---|")
    rows = []
    for detector in args.detectors:
        values = {"MODEL.BACKBONE.WEIGHTS": "", "INPUT.MIN_SIZE_TRAIN": [args.size], "INPUT.MAX_SIZE_TRAIN":
                  int(args.size * 1333 / 800), "DATASETS.TRAIN": ["shapes_train"], "SOLVER.IMS_PER_BATCH": args.batch,
                  "DATALOADER.NUM_WORKERS": 0, "MODEL.DEVICE": args.device}
        cfg = load_config(CONFIGS[detector], values=values)
        data, num_classes = batches(cfg, args.warmup + args.iters, device)
        for dtype_name in args.dtypes:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
            for impl in ("ours sampling-free", "ours baseline", "torchvision"):
                torch.manual_seed(0)
                if impl == "torchvision":
                    model = torchvision_model(cfg, num_classes)
                else:
                    model = build_model(load_config(CONFIGS[detector], values={
                        **values, "MODEL.SAMPLING_FREE_ON": impl.endswith("free")}), num_classes)
                    model.set_prior(1e-3)
                result = run(model, data, dtype=dtype, device=device, warmup=args.warmup)
                row = {"detector": detector, "implementation": impl, "dtype": dtype_name, "device": name,
                       "size": args.size, "batch": args.batch, **result}
                rows.append(row)
                print(f"| {detector} | {impl} | {dtype_name} | {result['s_per_iter']:.3f} | "
                      f"{result['images_per_s']:.1f} | {result['peak_gib']:.2f} |", flush=True)
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
