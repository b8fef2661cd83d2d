"""COCO-format detection datasets (pycocotools), for training and for evaluation."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision.transforms.functional import pil_to_tensor

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """Annotations or images that cannot be used; the message names the file and the record."""


class COCODetection(torch.utils.data.Dataset):
    """Images with ``boxes`` (x1, y1, x2, y2 in pixels), contiguous ``labels`` 1..C and optionally ``masks``.

    Training (``training=True``) drops crowd regions, as every COCO trainer does; boxes are clipped to the image and
    those with no area left are dropped, with a count in the log. Images without objects are kept: they are
    exactly the all-background negatives that sampling-free training learns from. Evaluation keeps every image;
    pycocotools reads the annotation file itself.

    ``__getitem__`` takes an index or an ``(index, hflip)`` pair, so that augmentation is decided by the sampler
    (deterministic and resumable) rather than by worker-process random state.
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path, *, training: bool, with_masks: bool = False,
                 name: str | None = None):
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        self.name = name or str(self.ann_file)
        self.training, self.with_masks = training, with_masks
        if not self.ann_file.is_file():
            raise DatasetError(f"{self.ann_file}: annotation file not found")
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found (annotations {self.ann_file})")
        try:
            self.coco = _quiet_coco(self.ann_file)
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{self.ann_file}: not a valid COCO annotation file ({exc!r})") from None
        cat_ids = sorted(self.coco.getCatIds())
        if not cat_ids:
            raise DatasetError(f"{self.ann_file}: no categories")
        self.category_ids = cat_ids  # contiguous label k (1-based) <-> COCO category id cat_ids[k - 1]
        self.class_names = [self.coco.cats[c]["name"] for c in cat_ids]
        self._label_of = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.image_ids = sorted(self.coco.imgs)
        if not self.image_ids:
            raise DatasetError(f"{self.ann_file}: no images")
        self._records = [self._record(i) for i in self.image_ids]
        dropped = sum(r["dropped"] for r in self._records)
        if dropped:
            logger.info("%s: dropped %d degenerate boxes (no area inside the image)", self.name, dropped)

    def _record(self, image_id: int) -> dict:
        info = self.coco.imgs[image_id]
        width, height = info.get("width"), info.get("height")
        if not width or not height:
            raise DatasetError(f"{self.ann_file}: image id {image_id} has no width/height")
        boxes, labels, anns, dropped = [], [], [], 0
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("category_id") not in self._label_of:
                raise DatasetError(f"{self.ann_file}: annotation id {ann.get('id')} has unknown category_id "
                                   f"{ann.get('category_id')!r}")
            if self.training and ann.get("iscrowd", 0):
                continue
            x, y, w, h = ann["bbox"]
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
                dropped += 1
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(self._label_of[ann["category_id"]])
            anns.append(ann)
        return {"id": image_id, "file": self.image_dir / info["file_name"], "width": width, "height": height,
                "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                "labels": np.asarray(labels, dtype=np.int64), "anns": anns, "dropped": dropped}

    def __len__(self) -> int:
        return len(self._records)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) from the annotations, without opening the image."""
        r = self._records[index]
        return r["height"], r["width"]

    def annotations(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Training boxes (xyxy) and labels, without opening the image."""
        r = self._records[index]
        return r["boxes"], r["labels"]

    def __getitem__(self, item):
        index, hflip = item if isinstance(item, tuple) else (item, False)
        r = self._records[index]
        image = read_image(r["file"], (r["height"], r["width"]),
                           source=f"image id {r['id']} in {self.ann_file}", sizes_from=str(self.ann_file))
        target = {"boxes": torch.from_numpy(r["boxes"].copy()), "labels": torch.from_numpy(r["labels"].copy()),
                  "image_id": r["id"]}
        if self.with_masks:
            masks = np.stack([self.coco.annToMask(a) for a in r["anns"]]) if r["anns"] else \
                np.zeros((0, r["height"], r["width"]), dtype=np.uint8)
            target["masks"] = torch.from_numpy(masks)
        return (flip_horizontally(image, target) if hflip else (image, target))


def read_image(path: Path, size: tuple[int, int], *, source: str, sizes_from: str) -> torch.Tensor:
    """An RGB image as floats in [0, 1], checked against the (height, width) its annotations give."""
    try:
        with Image.open(path) as img:
            image = pil_to_tensor(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read image ({source}): {exc}") from None
    if tuple(image.shape[1:]) != tuple(size):
        raise DatasetError(f"{path}: image is {image.shape[2]}x{image.shape[1]} but {sizes_from} says "
                           f"{size[1]}x{size[0]} ({source})")
    return image.float().div_(255)


def flip_horizontally(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    width = image.shape[-1]
    boxes = target["boxes"]
    target = {**target, "boxes": torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]],
                                             dim=1)}
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


def _quiet_coco(ann_file: Path) -> COCO:
    """pycocotools prints to stdout while loading; keep the console for our own progress."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def collate(batch):
    return tuple(zip(*batch))
