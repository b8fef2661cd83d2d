"""Box AP per object size at IoU 0.5 and 0.75 from finished runs' saved detections: whether a gap on large objects
is in finding them (AP50) or in placing the box (AP75) (issue 15, 3d).

    python benchmarks/size_ap.py RUN_DIR [RUN_DIR ...]

Reads each run's config (its first test set's annotation file) and its final ``inference/*/model_final/bbox.json``;
pycocotools's COCOeval, 100 detections per image, areas as COCO defines them.
"""
from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sampling_free.config import load_config
from sampling_free.data.catalog import resolve

AREAS = ("all", "small", "medium", "large")  # COCOeval's area ranges, in its order


def size_ap(run: str) -> dict[str, tuple[float, float, float]]:
    """Per area: (AP, AP50, AP75) in percent; nan where the test set has no object of that size."""
    cfg = load_config(f"{run}/config.yaml")
    name = cfg.DATASETS.TEST[0]
    detections = Path(run) / "inference" / name / "model_final" / "bbox.json"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(resolve(name, cfg.DATASETS.ROOT).ann_file))
        ev = COCOeval(gt, gt.loadRes(str(detections)), "bbox")
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, :, -1]  # IoU thresholds, recall, class, area (max 100 detections)

    def ap(iou, area):
        p = precision[iou, :, :, area]
        p = p[p > -1]
        return 100 * float(p.mean()) if p.size else float("nan")

    return {area: (ap(slice(None), k), ap(0, k), ap(5, k)) for k, area in enumerate(AREAS)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    args = p.parse_args()
    print("| run | size | AP | AP50 | AP75 |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        for area, (ap, ap50, ap75) in size_ap(run).items():
            print(f"| {run} | {area} | {ap:.1f} | {ap50:.1f} | {ap75:.1f} |")


if __name__ == "__main__":
    main()
