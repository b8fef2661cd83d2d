"""COCO-format detection datasets (pycocotools), for training and for evaluation."""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
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

    Labels follow the categories sorted by id, or ``class_names`` when given (matched by name; ``name_source``
    says where they came from, for the error when a category does not fit). Before anything else the file is
    checked: unique ids, annotations on listed images, finite boxes, every image file present.

    ``__getitem__`` takes an index or an ``(index, hflip)`` pair, so that augmentation is decided by the sampler
    (deterministic and resumable) rather than by worker-process random state.
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path | None, *, training: bool, with_masks: bool = False,
                 name: str | None = None, class_names=None, name_source: str = "the given class names"):
        """``image_dir`` None: the annotations alone (sizes and boxes, for counting π); no image can be read."""
        self.ann_file, self.image_dir = Path(ann_file), None if image_dir is None else Path(image_dir)
        self.name = name or str(self.ann_file)
        self.training, self.with_masks = training, with_masks
        if not self.ann_file.is_file():
            raise DatasetError(f"{self.ann_file}: annotation file not found")
        if self.image_dir is not None and not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found (annotations {self.ann_file})")
        try:
            self.coco = _quiet_coco(self.ann_file)
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{self.ann_file}: not a valid COCO annotation file ({exc!r})") from None
        _check_unique_ids(self.coco.dataset, self.ann_file)
        self.category_ids, self.class_names = _categories(self.coco, self.ann_file, class_names, name_source)
        self._label_of = {c: i + 1 for i, c in enumerate(self.category_ids) if c != -1}
        self.image_ids = sorted(self.coco.imgs)
        if not self.image_ids:
            raise DatasetError(f"{self.ann_file}: no images")
        orphans = [a for a in self.coco.dataset.get("annotations", []) if a.get("image_id") not in self.coco.imgs]
        if orphans:
            raise DatasetError(f"{self.ann_file}: annotation id {orphans[0].get('id')} refers to image id "
                               f"{orphans[0].get('image_id')!r}, which is not among the images"
                               + (f" ({len(orphans)} annotations do)" if len(orphans) > 1 else ""))
        self._records = [self._record(i) for i in self.image_ids]
        if self.image_dir is not None:
            check_image_files([r["file"] for r in self._records], self.image_dir, listed_in=self.ann_file)
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
            bbox = ann.get("bbox")
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
                raise DatasetError(f"{self.ann_file}: annotation id {ann.get('id')} (image id {image_id}) has bbox "
                                   f"{bbox!r}; expected four finite numbers [x, y, width, height]")
            if self.training and ann.get("iscrowd", 0):
                continue
            x, y, w, h = bbox
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
                dropped += 1
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(self._label_of[ann["category_id"]])
            anns.append(ann)
        if "file_name" not in info:
            raise DatasetError(f"{self.ann_file}: image id {image_id} has no file_name")
        file = None if self.image_dir is None else self.image_dir / info["file_name"]
        return {"id": image_id, "file": file, "width": width, "height": height,
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


def _check_unique_ids(dataset: dict, ann_file: Path) -> None:
    """pycocotools indexes images, annotations and categories by id, and a repeated id silently replaces the
    earlier record (its objects then land on the other image, or vanish from evaluation)."""
    for section in ("images", "annotations", "categories"):
        repeated = [(i, n) for i, n in Counter(r.get("id") for r in dataset.get(section, [])).items() if n > 1]
        if repeated:
            what = section[:-1] if section != "categories" else "category"
            more = f" ({len(repeated)} ids are repeated)" if len(repeated) > 1 else ""
            raise DatasetError(f"{ann_file}: {what} id {repeated[0][0]!r} appears {repeated[0][1]} times in "
                               f"'{section}'{more}; ids must be unique")


def _categories(coco: COCO, ann_file: Path, class_names, name_source: str) -> tuple[list[int], list[str]]:
    """(category ids, class names) in label order: the file's categories sorted by id, or -- when the class
    names are given (a trained model's, or the training set's) -- the categories matched to them by name."""
    cat_ids = sorted(coco.getCatIds())
    if not cat_ids:
        raise DatasetError(f"{ann_file}: no categories")
    if class_names is None:
        return cat_ids, [coco.cats[c]["name"] for c in cat_ids]
    by_name = {coco.cats[c]["name"]: c for c in cat_ids}
    used = {a["category_id"] for a in coco.dataset.get("annotations", [])}
    unknown = [coco.cats[c]["name"] for c in cat_ids if c in used and coco.cats[c]["name"] not in class_names]
    if unknown:
        raise DatasetError(f"{ann_file}: category {unknown[0]!r} is not among {name_source} {list(class_names)}")
    # a class this file has no category for keeps a label with an id no annotation uses (-1: none)
    return [by_name.get(n, -1) for n in class_names], list(class_names)


def check_image_files(files: list[Path], image_dir: Path, *, listed_in: Path) -> None:
    """Every image file exists, checked before any time is spent (one directory listing, a stat for names in
    sub-folders); otherwise the first missing file would only be found when a batch reaches it."""
    present = set(os.listdir(image_dir))
    missing = [f for f in files if not (f.name in present if f.parent == image_dir else f.is_file())]
    if missing:
        shown = ", ".join(str(f.relative_to(image_dir)) for f in missing[:5])
        raise DatasetError(f"{listed_in}: {len(missing)} of the {len(files)} image files it lists are not in "
                           f"{image_dir}: {shown}{', ...' if len(missing) > 5 else ''}")


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
