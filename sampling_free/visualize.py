"""Detections drawn on images: boxes, class names, scores and translucent masks (torchvision's drawing utilities)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

logger = logging.getLogger("sampling_free")

# Tableau-10: distinct on photographs and on each other; class k (1-based) gets PALETTE[(k - 1) % 10].
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
# Drawing threshold: the model's own test threshold (0.05, or π·C when sampling-free, often below 0.01) keeps weak
# detections because AP rewards every extra true positive ranked below the confident ones; a picture does not.
DEFAULT_SCORE_THRESHOLD = 0.3
MASK_ALPHA = 0.5


def class_colour(label: int) -> tuple[int, int, int]:
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def _as_uint8(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def draw_detections(image: torch.Tensor, detections: dict, *, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                    mask_alpha: float = MASK_ALPHA) -> torch.Tensor:
    """``image`` (CHW, uint8 or float 0-1) with the detections scoring at least ``score_threshold``: masks blended
    at ``mask_alpha`` first, then box outlines and a "name score" tag inside each box's top-left corner, in the
    class's colour, weakest first so the strongest are on top. ``detections`` as ``Detector.predict`` returns
    them. Returns a uint8 CHW tensor."""
    canvas = _as_uint8(image.cpu())
    scores = detections["scores"].cpu()
    keep = torch.where(scores >= score_threshold)[0]
    keep = keep[torch.argsort(scores[keep], stable=True)]  # strongest drawn last, on top
    if len(keep) == 0:
        return canvas
    labels = detections["labels"].cpu()[keep].tolist()
    colours = [class_colour(label) for label in labels]
    if detections.get("masks") is not None:
        masks = detections["masks"].cpu()[keep]
        if masks.dtype != torch.bool:  # probabilities, as the model returns them
            masks = masks > 0.5
        canvas = draw_segmentation_masks(canvas, masks.reshape(len(keep), *canvas.shape[1:]), alpha=mask_alpha,
                                         colors=colours)
    names = detections.get("class_names")
    texts = [f"{names[k] if names else labels[i]} {float(scores[k]):.2f}" for i, k in enumerate(keep.tolist())]
    width = max(1, round(min(canvas.shape[1:]) / 200))  # visible on 160 px thumbnails and on 1333 px photos
    return draw_bounding_boxes(canvas, detections["boxes"].cpu()[keep], labels=texts, colors=colours, width=width,
                               fill_labels=True)


def output_names(files: list[Path]) -> list[str]:
    """``<stem>.png`` per input, with ``_<k>`` added where two inputs share a stem (same name in two folders)."""
    names, taken = [], set()
    for f in files:
        name, k = f"{f.stem}.png", 1
        while name in taken:
            name, k = f"{f.stem}_{k}.png", k + 1
        taken.add(name)
        names.append(name)
    return names


def run_demo(detector, inputs: list[str | Path], out_dir: str | Path, *,
             score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> list[Path]:
    """One PNG per image (files, or every image in folders) in ``out_dir``; returns the PNG paths."""
    from .api import image_files, load_image

    files = image_files(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, name in zip(files, output_names(files)):
        image = load_image(path)
        detections = detector.predict(image)
        drawn = draw_detections(image, detections, score_threshold=score_threshold)
        to_pil_image(drawn).save(out_dir / name)  # PIL: torchvision.io's encoders are deprecated
        shown = int((detections["scores"] >= score_threshold).sum())
        logger.info("%s: %d detections, %d drawn (score >= %g) -> %s", path, len(detections["scores"]), shown,
                    score_threshold, out_dir / name)
        written.append(out_dir / name)
    return written
