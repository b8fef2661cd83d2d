"""PASCAL VOC detection datasets in the devkit layout, with the same interface as ``COCODetection``.

``<root>/ImageSets/Main/<split>.txt`` lists file ids; ``<root>/Annotations/<id>.xml`` holds each image's size and
objects; ``<root>/JPEGImages/<id>.jpg`` the pixels. The XML is read with the standard library at construction, so
prior estimation and aspect grouping never decode an image.

Class names, in label order: those given (a trained model's, or the training set's when building its test sets),
else ``<root>/classes.txt`` (one name a line), else the 20 VOC classes in the devkit's order when every name in the
split's XML files is one of them, else the sorted names found there -- data from the common labelling tools comes in
this layout with the user's own names.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from .coco import DatasetError, check_image_files, flip_horizontally, read_image

logger = logging.getLogger(__name__)
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
CLASSES_FILE = "classes.txt"


def _text(node: ET.Element, path: str, xml_file: Path, what: str) -> str:
    found = node.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise DatasetError(f"{xml_file}: {what} has no <{path}>")
    return found.text.strip()


def _number(node: ET.Element, path: str, xml_file: Path, what: str) -> float:
    value = _text(node, path, xml_file, what)
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(f"{xml_file}: {what} <{path}> is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise DatasetError(f"{xml_file}: {what} <{path}> is {value!r}, not a finite number")
    return number


def parse_voc_xml(xml_file: str | Path) -> dict:
    """Size and objects (class ``names``) of one annotation file; boxes converted to 0-based continuous xyxy.

    VOC pixel coordinates are 1-based and inclusive (a box from pixel 1 to pixel 10 covers 10 pixels), so the
    continuous box that covers the same pixels is ``[xmin - 1, ymin - 1, xmax, ymax]``.
    """
    xml_file = Path(xml_file)
    try:
        root = ET.parse(xml_file).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{xml_file}: annotation file not found") from None
    except (ET.ParseError, OSError) as exc:
        raise DatasetError(f"{xml_file}: not a valid VOC annotation file ({exc})") from None
    width = _number(root, "size/width", xml_file, "the image")
    height = _number(root, "size/height", xml_file, "the image")
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise DatasetError(f"{xml_file}: image size {width}x{height} is not a positive whole number of pixels")
    boxes, names, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        name = _text(obj, "name", xml_file, f"object {k}")
        what = f"object {k} ({name})"
        x1, y1, x2, y2 = (_number(obj, f"bndbox/{c}", xml_file, what) for c in ("xmin", "ymin", "xmax", "ymax"))
        if x2 < x1 or y2 < y1:
            raise DatasetError(f"{xml_file}: {what} has xmax < xmin or ymax < ymin ({x1}, {y1}, {x2}, {y2})")
        flag = obj.find("difficult")  # absent in some files: not difficult
        flag = "0" if flag is None or not (flag.text or "").strip() else flag.text.strip()
        if flag not in ("0", "1"):
            raise DatasetError(f"{xml_file}: {what} has <difficult> {flag!r}, expected 0 or 1")
        boxes.append([x1 - 1, y1 - 1, x2, y2])
        names.append(name)
        difficult.append(flag == "1")
    return {"width": int(width), "height": int(height), "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "names": names, "difficult": np.asarray(difficult, dtype=bool)}


def read_classes_file(root: str | Path) -> tuple[str, ...] | None:
    """The names in ``<root>/classes.txt``, or None without one."""
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        return None
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names or len(set(names)) != len(names):
        raise DatasetError(f"{path}: expected distinct class names, one a line")
    return names


def names_in_files(found: set[str]) -> tuple[str, ...]:
    """Class names for a split without ``classes.txt``: the VOC 20 in the devkit's order when every name found is
    one of them (a split missing some classes still gets the standard labels), else the sorted names found."""
    return VOC_CLASSES if found <= set(VOC_CLASSES) else tuple(sorted(found))


class VOCDetection(torch.utils.data.Dataset):
    """A VOC split with ``COCODetection``'s interface: ``boxes`` (xyxy pixels), ``labels`` 1..C, image ids 1..N.

    Training (``training=True``) drops difficult objects, as the VOC devkit's own training sets do; evaluation keeps
    them with ``target["difficult"]`` and ``difficult(i)`` set, and ``coco`` marks them ``iscrowd`` so that COCO
    evaluation ignores them too. Boxes are clipped to the image and those with no area left dropped (counted in the
    log). ``ann_file`` is the split list: it names the images, and the prior cache hashes it.
    """

    def __init__(self, root: str | Path, split: str, *, training: bool, class_names=None, with_masks: bool = False,
                 name: str | None = None, name_source: str = "the given class names"):
        self.root, self.split = Path(root), split
        self.ann_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        self.image_dir = self.root / "JPEGImages"
        self.name = name or f"voc:{self.root}:{split}"
        self.training = training
        if with_masks:
            raise DatasetError(f"{self.root}: VOC detection annotations have no instance masks; mask training needs "
                               f"COCO-format data")
        if not self.ann_file.is_file():
            raise DatasetError(f"{self.ann_file}: split file not found (VOC devkit root {self.root})")
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found (VOC devkit root {self.root})")
        ids = [line.split()[0] for line in self.ann_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetError(f"{self.ann_file}: no images listed")
        if len(set(ids)) != len(ids):
            raise DatasetError(f"{self.ann_file}: lists an image more than once")
        parsed = [parse_voc_xml(self._xml(file_id)) for file_id in ids]
        self.class_names = self._class_names(class_names, name_source, ids, parsed)
        self.category_ids = list(range(1, len(self.class_names) + 1))
        self.image_ids = list(range(1, len(ids) + 1))
        label_of = {name: k + 1 for k, name in enumerate(self.class_names)}
        self._records = [self._record(file_id, r, label_of) for file_id, r in zip(ids, parsed)]
        check_image_files([r["file"] for r in self._records], self.image_dir, listed_in=self.ann_file)
        dropped = sum(r["dropped"] for r in self._records)
        if dropped:
            logger.info("%s: dropped %d degenerate boxes (no area inside the image)", self.name, dropped)
        self.coco = self._build_coco()

    def _xml(self, file_id: str) -> Path:
        return self.root / "Annotations" / f"{file_id}.xml"

    def _class_names(self, given, given_source: str, ids: list[str], parsed: list[dict]) -> list[str]:
        """The class names (see the module doc); every object's name must be one of them."""
        from_file = read_classes_file(self.root)
        if given is not None:
            names, source = list(given), given_source
        elif from_file is not None:
            names = list(from_file)
            source = f"{self.root / CLASSES_FILE} (add the name there, or delete the file to take the class names " \
                     f"from the XML files)"
        else:
            found = {n for r in parsed for n in r["names"]}
            names, source = list(names_in_files(found)), "the names found"
            if found and names != list(VOC_CLASSES):
                logger.info("%s: no %s; %d class names found in the XML files, in sorted order: %s", self.name,
                            CLASSES_FILE, len(names), ", ".join(names))
        known = set(names)
        for file_id, r in zip(ids, parsed):
            for k, name in enumerate(r["names"]):
                if name not in known:
                    hint = "" if given is None or from_file is None else \
                        f"; {self.root / CLASSES_FILE} is not used when the class names are given"
                    raise DatasetError(f"{self._xml(file_id)}: object {k} ({name}) has class name {name!r}, which is "
                                       f"not among {source}: {names}{hint}")
        return names

    def _record(self, file_id: str, r: dict, label_of: dict[str, int]) -> dict:
        labels = np.asarray([label_of[n] for n in r["names"]], dtype=np.int64)
        boxes = r["boxes"].copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, r["width"])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, r["height"])
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 1e-3) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-3)
        return {"file_id": file_id, "file": self.image_dir / f"{file_id}.jpg", "width": r["width"],
                "height": r["height"], "boxes": boxes[keep], "labels": labels[keep],
                "difficult": r["difficult"][keep], "dropped": int((~keep).sum())}

    def _build_coco(self) -> COCO:
        """Every object, difficult ones as ``iscrowd=1``, so pycocotools can score this split in memory."""
        images, annotations = [], []
        for image_id, r in zip(self.image_ids, self._records):
            images.append({"id": image_id, "file_name": r["file"].name, "width": r["width"], "height": r["height"]})
            for box, label, hard in zip(r["boxes"].tolist(), r["labels"].tolist(), r["difficult"].tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                    "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": int(hard)})
        categories = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names)]
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def __len__(self) -> int:
        return len(self._records)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def file_id(self, index: int) -> str:
        """The VOC file id (``2008_000008``) behind contiguous image id ``index + 1``."""
        return self._records[index]["file_id"]

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) from the XML, without opening the image."""
        r = self._records[index]
        return r["height"], r["width"]

    def _keep(self, r: dict) -> np.ndarray:
        return ~r["difficult"] if self.training else np.ones(len(r["labels"]), dtype=bool)

    def annotations(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (xyxy) and labels, without opening the image; difficult objects only when not training."""
        r = self._records[index]
        keep = self._keep(r)
        return r["boxes"][keep], r["labels"][keep]

    def difficult(self, index: int) -> np.ndarray:
        """Difficult flags aligned with ``annotations(index)`` (all False when training: those were dropped)."""
        r = self._records[index]
        return r["difficult"][self._keep(r)]

    def __getitem__(self, item):
        index, hflip = item if isinstance(item, tuple) else (item, False)
        r = self._records[index]
        image_id = self.image_ids[index]
        xml = self.root / "Annotations" / f"{r['file_id']}.xml"
        image = read_image(r["file"], (r["height"], r["width"]), source=f"{r['file_id']} in {self.ann_file}",
                           sizes_from=str(xml))
        boxes, labels = self.annotations(index)
        target = {"boxes": torch.from_numpy(boxes.copy()), "labels": torch.from_numpy(labels.copy()),
                  "image_id": image_id}
        if not self.training:
            target["difficult"] = torch.from_numpy(self.difficult(index).copy())
        return flip_horizontally(image, target) if hflip else (image, target)
