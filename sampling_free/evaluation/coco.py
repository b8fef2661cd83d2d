"""COCO box (and mask) AP with pycocotools, numbers in percent as detectron2 prints them."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from ..data.build import batches
from ..data.voc import VOCDetection
from ..files import write_json_atomic, write_text_atomic
from .voc import check_metric, format_voc_table, voc_metrics

logger = logging.getLogger(__name__)
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@torch.no_grad()
def run_inference(model, loader, device) -> list[dict]:
    """Detections per image, in original image coordinates, on the CPU; masks already as COCO RLE."""
    model.eval()
    predictions = []
    with batches(loader) as stream:
        for images, targets in stream:
            outputs = model([im.to(device) for im in images])
            for target, out in zip(targets, outputs):
                prediction = {"image_id": target["image_id"], **{k: v.cpu() for k, v in out.items()}}
                if "masks" in prediction:
                    prediction["masks"] = masks_to_rle(prediction["masks"])
                predictions.append(prediction)
    return predictions


def masks_to_rle(masks: torch.Tensor) -> list[dict]:
    """Mask probabilities (N, 1, H, W), thresholded at 0.5, as COCO RLE (counts as text). Encoded per image as it is
    predicted: a test set's full-image float masks (100 per image at a 1e-4 score threshold) would not fit in memory
    (2,000 images of 256 px: 50 GB)."""
    binary = (masks[:, 0] > 0.5) if masks.dim() == 4 else masks.bool()
    if len(binary) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(binary.permute(1, 2, 0).numpy().astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def to_coco_results(dataset, predictions: list[dict]) -> tuple[list[dict], list[dict]]:
    """(bbox results, segm results) in COCO results format, with the dataset's own category ids."""
    boxes_out, masks_out = [], []
    for p in predictions:
        boxes, masks = coco_records(p, image_id=int(p["image_id"]), category_ids=dataset.category_ids)
        boxes_out += boxes
        masks_out += masks
    return boxes_out, masks_out


def coco_records(detections: dict, *, image_id: int, category_ids, extra=None) -> tuple[list[dict], list[dict]]:
    """One image's detections (``boxes`` xyxy, ``scores``, ``labels`` 1..C, optional ``masks``) as COCO result
    records: ``bbox`` [x, y, w, h], ``category_id`` = ``category_ids[label - 1]``; masks as RLE. ``extra(k)``
    adds fields to detection k's records."""
    boxes = detections["boxes"].numpy().astype(np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1) if len(boxes) else boxes
    boxes_out, masks_out = [], []
    for k in range(len(boxes)):
        label = int(detections["labels"][k])
        record = {"image_id": image_id, "category_id": category_ids[label - 1],
                  "score": float(detections["scores"][k]), **(extra(k) if extra else {})}
        boxes_out.append({**record, "bbox": [round(float(v), 2) for v in xywh[k]]})
        if "masks" in detections:
            mask = detections["masks"][k]
            if not isinstance(mask, dict):  # probabilities (1, H, W) or a boolean mask, not yet RLE
                mask = masks_to_rle(mask[None])[0]
            masks_out.append({**record, "segmentation": mask})
    return boxes_out, masks_out


def coco_metrics(coco_gt, results: list[dict], iou_type: str, class_names=None) -> tuple[dict, dict, str]:
    """(AP metrics in percent, per-class AP, pycocotools' printed summary)."""
    if not results:
        logger.warning("no detections for %s evaluation: every AP is 0", iou_type)
        return {k: 0.0 for k in METRIC_NAMES}, {}, "no detections\n"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {k: float(v * 100) if v >= 0 else float("nan") for k, v in zip(METRIC_NAMES, ev.stats[:6])}
    per_class = {}
    precision = ev.eval["precision"]  # (iou, recall, class, area, maxdets)
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        name = coco_gt.cats[cat_id]["name"] if class_names is None else class_names[k]
        per_class[name] = float(p.mean() * 100) if p.size else float("nan")
    return metrics, per_class, text.getvalue()


def format_table(metrics: dict) -> str:
    header = "| task | " + " | ".join(METRIC_NAMES) + " |"
    rows = [header, "|" + "---|" * (len(METRIC_NAMES) + 1)]
    for task, values in metrics.items():
        if task in ("bbox", "segm"):
            rows.append(f"| {task} | " + " | ".join(f"{values[k]:.2f}" for k in METRIC_NAMES) + " |")
    if "voc" in metrics:
        rows.append(f"VOC mAP@0.5 ({metrics['voc']['metric']}): {metrics['voc']['mAP']:.2f}")
    return "\n".join(rows)


def evaluate_dataset(model, dataset, loader, device, out_dir: str | Path, *,
                     voc_metric: str = "voc07_11point") -> dict:
    """Inference on ``dataset``, COCO metrics, and ``bbox.json`` / ``segm.json`` / ``metrics.json`` in out_dir."""
    if isinstance(dataset, VOCDetection):
        check_metric(voc_metric)  # before inference, so a typo costs nothing
    start = time.perf_counter()
    predictions = run_inference(model, loader, device)
    seconds = time.perf_counter() - start
    box_results, mask_results = to_coco_results(dataset, predictions)
    return score_results(dataset, box_results, mask_results if any("masks" in p for p in predictions) else None,
                         [without_masks(p) for p in predictions], out_dir, voc_metric=voc_metric, seconds=seconds)


def without_masks(prediction: dict) -> dict:
    """A prediction without its full-image mask tensor (cheap to send between processes)."""
    return {k: v for k, v in prediction.items() if k != "masks"}


def score_results(dataset, box_results: list[dict], mask_results: list[dict] | None, predictions: list[dict],
                  out_dir: str | Path, *, voc_metric: str = "voc07_11point", seconds: float = 0.0) -> dict:
    """COCO metrics of detections in COCO results format (and VOC metrics from ``predictions`` for a VOC dataset).

    A ``VOCDetection`` is also scored with the VOC devkit's AP (``voc_metric``: "voc07_11point" or "area") under
    ``metrics["voc"]``: COCO's AP50 on VOC reads several points lower and is not the number VOC papers report.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "bbox.json", json.dumps(box_results))
    metrics: dict = {}
    metrics["bbox"], metrics["bbox_per_class"], summary = coco_metrics(dataset.coco, box_results, "bbox")
    logger.info("%s bbox:\n%s", dataset.name, summary)
    if mask_results is not None:
        write_text_atomic(out_dir / "segm.json", json.dumps(mask_results))
        metrics["segm"], metrics["segm_per_class"], summary = coco_metrics(dataset.coco, mask_results, "segm")
        logger.info("%s segm:\n%s", dataset.name, summary)
    if isinstance(dataset, VOCDetection):
        metrics["voc"] = voc_metrics(dataset, predictions, metric=voc_metric)
        logger.info("%s VOC AP@0.5:\n%s", dataset.name, format_voc_table(metrics["voc"]))
    metrics["inference"] = {"images": len(predictions), "seconds": round(seconds, 2),
                            "detections": len(box_results)}
    # last, and whole or not at all: a metrics.json means "this evaluation finished" to compare and to a rerun
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics
