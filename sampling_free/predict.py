"""``sampling-free predict``: a trained model's detections on unlabelled images, as data (COCO results JSON)."""
from __future__ import annotations

import logging
from pathlib import Path

from .evaluation.coco import coco_records

logger = logging.getLogger("sampling_free")


def predict_to_coco(detector, inputs: list[str | Path], *, score_threshold: float = 0.0) -> list[dict]:
    """COCO result records for every image (files, or every image in folders), one per detection scoring at least
    ``score_threshold`` (0: all the model keeps, down to its own test threshold). Beside COCO's ``image_id``
    (the image's 1-based position in the input order), ``category_id`` (the model's label 1..C), ``bbox``
    [x, y, w, h] in pixels and ``score``, each record names its ``file_name`` and ``category_name``; mask models add
    ``segmentation`` (RLE)."""
    from .api import image_files

    records = []
    for image_id, path in enumerate(image_files(inputs), start=1):
        detections = detector.predict(path)
        keep = detections["scores"] >= score_threshold
        kept = {k: v[keep] for k, v in detections.items() if k != "class_names"}
        names = [n for n, k in zip(detections["class_names"], keep.tolist()) if k]
        boxes, masks = coco_records(kept, image_id=image_id, category_ids=range(1, len(detector.class_names) + 1),
                                    extra=lambda k: {"file_name": str(path), "category_name": names[k]})
        for box, mask in zip(boxes, masks):
            box["segmentation"] = mask["segmentation"]
        records += boxes
        logger.info("%s: %d detections (score >= %g)", path, len(boxes), score_threshold)
    return records
