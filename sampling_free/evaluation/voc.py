"""PASCAL VOC detection AP at IoU 0.5, per class, as the VOC devkit (VOCevaldet.m) computes it.

Per class, detections from all images are ranked by descending score and matched greedily: each goes to the
ground truth it overlaps most in its image. At IoU >= 0.5 (the devkit's ``ovmax >= minoverlap``; the Python ports
in py-faster-rcnn write ``>``), it is a true positive when that object is not yet matched, a false positive when it
is (a duplicate), and neither when the object is difficult; below 0.5 it is a false positive. Difficult objects
are not counted in recall. AP is the VOC2007 11-point interpolation or, from VOC2010 on, the area under the
interpolated precision/recall curve; mAP averages the classes that have at least one non-difficult object.
"""
from __future__ import annotations

import numpy as np

METRICS = ("voc07_11point", "area")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"VOC metric {metric!r}: expected one of {list(METRICS)}")
    return metric


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of ``boxes``, on continuous 0-based coordinates.

    The devkit adds 1 to widths and heights because its coordinates are 1-based inclusive pixel indices; our boxes
    were converted on load to the continuous boxes covering the same pixels ([xmin - 1, ymin - 1, xmax, ymax]),
    whose plain differences already equal the devkit's ``xmax - xmin + 1``. Adding 1 again would be wrong.
    """
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def average_precision(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool) -> float:
    """AP of one class from its cumulative recall/precision, in [0, 1]."""
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        # Thresholds k/10 exactly: np.arange(0, 1.1, 0.1) yields 0.30000000000000004, which a recall of 3/10 misses.
        return sum(float(precision[recall >= k / 10].max(initial=0.0)) for k in range(11)) / 11
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope: the best precision at this recall or more
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def precision_recall(detections, ground_truth, label: int, *, iou_threshold: float = 0.5):
    """(recall, precision, number of non-difficult objects) for one class, cumulative over ranked detections."""
    gts = {}
    npos = 0
    for i, gt in enumerate(ground_truth):
        mask = np.asarray(gt["labels"]) == label
        hard = np.asarray(gt["difficult"], dtype=bool)[mask]
        gts[i] = (np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)[mask], hard, np.zeros(len(hard), bool))
        npos += int((~hard).sum())
    image_of, scores, boxes = [], [], []
    for i, det in enumerate(detections):
        mask = np.asarray(det["labels"]) == label
        image_of += [i] * int(mask.sum())
        scores.append(np.asarray(det["scores"], dtype=np.float64).reshape(-1)[mask])
        boxes.append(np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)[mask])
    scores = np.concatenate(scores) if scores else np.zeros(0)
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    order = np.argsort(-scores, kind="stable")  # ties keep input order, as MATLAB's stable sort does
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, k in enumerate(order):
        gt_boxes, hard, taken = gts.get(image_of[k], (np.zeros((0, 4)), np.zeros(0, bool), np.zeros(0, bool)))
        iou = box_iou(boxes[k], gt_boxes) if len(gt_boxes) else np.zeros(0)
        j = int(iou.argmax()) if len(iou) else -1
        if j < 0 or iou[j] < iou_threshold:
            fp[d] = 1
        elif hard[j]:
            continue  # a detection of a difficult object: neither right nor wrong
        elif taken[j]:
            fp[d] = 1  # a duplicate of an object already found
        else:
            tp[d], taken[j] = 1, True
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / max(npos, 1)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, npos


def evaluate_detections(detections, ground_truth, class_names, *, metric: str = "voc07_11point",
                        iou_threshold: float = 0.5) -> dict:
    """VOC AP per class and mAP, in percent.

    ``detections`` and ``ground_truth`` are per-image lists aligned by index, of dicts with ``boxes`` (xyxy,
    continuous 0-based), ``labels`` (1..C) and ``scores`` / ``difficult``. A class without non-difficult objects
    has AP NaN and is left out of mAP.
    """
    check_metric(metric)
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truth)} images")
    per_class = {}
    for k, name in enumerate(class_names):
        recall, precision, npos = precision_recall(detections, ground_truth, k + 1, iou_threshold=iou_threshold)
        per_class[name] = (100 * average_precision(recall, precision, use_07_metric=metric == "voc07_11point")
                           if npos else float("nan"))
    scored = [v for v in per_class.values() if not np.isnan(v)]
    return {"mAP": float(np.mean(scored)) if scored else float("nan"), "per_class": per_class, "metric": metric}


def voc_metrics(dataset, predictions: list[dict], *, metric: str = "voc07_11point") -> dict:
    """VOC AP of ``run_inference`` predictions on a ``VOCDetection`` built for evaluation (difficult kept)."""
    check_metric(metric)
    if dataset.training:
        raise ValueError(f"{dataset.name}: VOC evaluation needs the dataset built with training=False, which keeps "
                         f"the difficult objects")
    index_of = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
    detections = [empty] * len(dataset)
    for p in predictions:
        detections[index_of[int(p["image_id"])]] = {k: np.asarray(p[k]) for k in ("boxes", "scores", "labels")}
    ground_truth = []
    for i in range(len(dataset)):
        boxes, labels = dataset.annotations(i)
        ground_truth.append({"boxes": boxes, "labels": labels, "difficult": dataset.difficult(i)})
    return evaluate_detections(detections, ground_truth, dataset.class_names, metric=metric)


def format_voc_table(result: dict) -> str:
    rows = [f"| class | AP ({result['metric']}) |", "|---|---|"]
    rows += [f"| {name} | {ap:.2f} |" for name, ap in result["per_class"].items()]
    rows.append(f"| **mAP** | **{result['mAP']:.2f}** |")
    return "\n".join(rows)
