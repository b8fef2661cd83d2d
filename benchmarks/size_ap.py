"""Box AP per object size at IoU 0.5 and 0.75 from finished runs' saved detections: whether a gap on large objects
is in finding them (AP50) or in placing the box (AP75) (issue 15, 3d).

    python benchmarks/size_ap.py RUN_DIR [RUN_DIR ...] [--dataset NAME]

Reads each run's config (its first test set's annotation file) and its final ``inference/*/model_final/bbox.json``;
pycocotools's COCOeval, 100 detections per image, areas as COCO defines them. A second table splits localisation:
per object, among its image's detections of its class that overlap it (IoU >= 0.5), the IoU of the highest-scored
one (the box AP sees first), the share of objects where that IoU is below 0.75 (missed at AP75 although found), the
highest IoU of any (the best box the model produced), the median score of those top boxes, and the rank correlation
of their score with their IoU (Spearman): whether the ranking AP uses still tells better boxes from worse ones.
A third counts, at IoU 0.5 and 0.75, the false positives of each size that score at least the 10th percentile of
the true positives' scores (errors ranked among the hits), split into boxes on an object of another class (at that
IoU) and the rest: duplicates, loose boxes on objects of their own class, boxes on nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import torch
from torchvision.ops import box_iou

from sampling_free.config import load_config
from sampling_free.data.catalog import resolve

AREAS = ("all", "small", "medium", "large")  # COCOeval's area ranges, in its order


def size_ap(run: str, dataset: str | None = None):
    """Per area: (AP, AP50, AP75) in percent, nan where the test set has no object of that size; the ground truth
    and detections as pycocotools objects. ``dataset``: a test set other than the run's own (the output folder of
    ``sampling-free eval`` on it), as DATASETS.TEST names it."""
    found = sorted(Path(run).glob("inference/*/model_final/bbox.json"))
    if len(found) != 1:
        raise SystemExit(f"{run}: expected one inference/*/model_final/bbox.json, found {len(found)}")
    detections = found[0]
    if dataset is None:
        cfg = load_config(f"{run}/config.yaml")
        spec = resolve(cfg.DATASETS.TEST[0], cfg.DATASETS.ROOT)
    else:
        spec = resolve(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(spec.ann_file))
        ev = COCOeval(gt, gt.loadRes(str(detections)), "bbox")
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, :, -1]  # IoU thresholds, recall, class, area (max 100 detections)

    def ap(iou, area):
        p = precision[iou, :, :, area]
        p = p[p > -1]
        return 100 * float(p.mean()) if p.size else float("nan")

    return {area: (ap(slice(None), k), ap(0, k), ap(5, k)) for k, area in enumerate(AREAS)}, gt, ev


def xyxy(anns) -> torch.Tensor:
    return torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                         for a in anns]).reshape(-1, 4)


def false_positives(ev, *, area: int, iou_index: int) -> tuple[int, float, dict[str, int]]:
    """COCOeval's matches at one IoU threshold and area range: (true positives, their scores' 10th percentile, the
    false positives scoring at least that, by kind: a box on an object of another class at the threshold, or on
    anything else)."""
    gt, dt, threshold = ev.cocoGt, ev.cocoDt, float(ev.params.iouThrs[iou_index])
    true_scores, errors = [], []
    for e in ev.evalImgs:
        if e is None or e["aRng"] != ev.params.areaRng[area]:
            continue
        for k, det in enumerate(e["dtIds"]):
            if e["dtIgnore"][iou_index][k]:
                continue
            d = dt.anns[det]
            if e["dtMatches"][iou_index][k] > 0:
                true_scores.append(d["score"])
                continue
            objects = [o for o in gt.imgToAnns[d["image_id"]] if not o.get("iscrowd", 0)]
            iou = box_iou(xyxy([d]), xyxy(objects))[0] if objects else torch.zeros(0)
            other = [i for i, o in enumerate(objects) if o["category_id"] != d["category_id"]]
            errors.append(("other class" if other and float(iou[other].max()) >= threshold else "rest",
                           d["score"]))
    if not true_scores:
        return 0, float("nan"), {}
    floor = float(torch.tensor(true_scores, dtype=torch.float64).quantile(0.1))
    kinds = {"other class": 0, "rest": 0}
    for kind, score in errors:
        kinds[kind] += score >= floor
    return len(true_scores), floor, kinds


def size_of(area: float) -> str:
    """COCO's size of an object of this area (its small / medium / large limits, 32² and 96²)."""
    return "small" if area < 32**2 else "medium" if area < 96**2 else "large"


def top_and_best_iou(gt, dt) -> dict[str, list[tuple[float, float]]]:
    """Per size: (IoU of the top-scored overlapping detection, best IoU of any, the top one's score) for every object
    some detection of its class overlaps at IoU >= 0.5."""
    out = {"small": [], "medium": [], "large": []}
    for image in gt.getImgIds():
        objects = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=image)) if not a.get("iscrowd", 0)]
        detections = dt.loadAnns(dt.getAnnIds(imgIds=image))
        for obj in objects:
            mine = [d for d in detections if d["category_id"] == obj["category_id"]]
            if not mine:
                continue
            iou = box_iou(xyxy([obj]), xyxy(mine))[0]
            scores = torch.tensor([d["score"] for d in mine])
            overlapping = iou >= 0.5
            if overlapping.any():
                top = int(torch.where(overlapping, scores, torch.tensor(-1.0)).argmax())
                out[size_of(obj["area"])].append((float(iou[top]), float(iou.max()), float(scores[top])))
    return out


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Rank correlation; tied values share their mean rank (saturated scores tie at 1.0)."""
    def ranks(v):
        order = v.argsort()
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=v.dtype)
        for value in v.unique():  # average the ranks of ties
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    a, b = ranks(x), ranks(y)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--dataset", help="the test set the runs' detections are on, when not their config's")
    args = p.parse_args()
    results = {run: size_ap(run, args.dataset) for run in args.runs}
    print("| run | size | AP | AP50 | AP75 |")
    print("|---|---|---|---|---|")
    for run, (table, _, _) in results.items():
        for area, (ap, ap50, ap75) in table.items():
            print(f"| {run} | {area} | {ap:.1f} | {ap50:.1f} | {ap75:.1f} |")
    print()
    print("| run | size | objects found | IoU of the top-scored box | top box IoU < 0.75 | best IoU of any box | "
          "median score | score-IoU rank correlation |")
    print("|---|---|---|---|---|---|---|---|")
    for run, (_, gt, ev) in results.items():
        for size, pairs in top_and_best_iou(gt, ev.cocoDt).items():
            if pairs:
                values = torch.tensor(pairs, dtype=torch.float64)
                top, best, _ = values.mean(0).tolist()
                loose = float((values[:, 0] < 0.75).double().mean())
                print(f"| {run} | {size} | {len(pairs)} | {top:.3f} | {loose:.1%} | {best:.3f} | "
                      f"{float(values[:, 2].median()):.4f} | {spearman(values[:, 0], values[:, 2]):.2f} |")
    print()
    print("| run | size | IoU | true positives | their 10th-percentile score | false positives above it: "
          "on another class's object / the rest |")
    print("|---|---|---|---|---|---|")
    for run, (_, _, ev) in results.items():
        for area in range(1, len(AREAS)):
            for iou_index in (0, 5):
                n, floor, kinds = false_positives(ev, area=area, iou_index=iou_index)
                if n:
                    print(f"| {run} | {AREAS[area]} | {ev.params.iouThrs[iou_index]:.2f} | {n} | {floor:.4f} | "
                          f"{kinds['other class']} / {kinds['rest']} |")


if __name__ == "__main__":
    main()
