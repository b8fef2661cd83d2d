"""Dataset names -> files. Catalog names resolve under a datasets root; ``coco:<json>:<dir>`` names any folder."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import shapes

ENV_ROOT = "SAMPLING_FREE_DATASETS"

# name -> (annotation file, image folder), relative to the datasets root (detectron2's layout).
COCO_CATALOG = {
    "coco_2017_train": ("coco/annotations/instances_train2017.json", "coco/train2017"),
    "coco_2017_val": ("coco/annotations/instances_val2017.json", "coco/val2017"),
}
SHAPES_SPLITS = {"shapes_train": "train", "shapes_val": "val"}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    ann_file: Path
    image_dir: Path


def datasets_root(configured: str = "") -> Path:
    return Path(configured or os.environ.get(ENV_ROOT) or "datasets")


def known_names() -> list[str]:
    return sorted([*COCO_CATALOG, *SHAPES_SPLITS])


def resolve(name: str, root: str | Path = "") -> DatasetSpec:
    """Find a dataset's files; the built-in ``shapes`` is generated on first use."""
    root = datasets_root(str(root))
    if name.startswith("coco:"):
        parts = name.split(":")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"dataset {name!r}: expected coco:<annotations.json>:<image folder>")
        return DatasetSpec(name, Path(parts[1]), Path(parts[2]))
    if name in SHAPES_SPLITS:
        folder = shapes.ensure_shapes(root)
        split = SHAPES_SPLITS[name]
        return DatasetSpec(name, folder / "annotations" / f"instances_{split}.json", folder / split)
    if name in COCO_CATALOG:
        ann, images = COCO_CATALOG[name]
        spec = DatasetSpec(name, root / ann, root / images)
        if not spec.ann_file.exists():
            raise FileNotFoundError(
                f"dataset {name!r}: {spec.ann_file} not found. Put COCO under {root} (coco/annotations, "
                f"coco/train2017, coco/val2017) or point ${ENV_ROOT} / DATASETS.ROOT at the folder that holds it")
        return spec
    import difflib

    near = difflib.get_close_matches(name, known_names(), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ValueError(f"unknown dataset {name!r}{hint} Known: {known_names()}, or coco:<annotations.json>:<images>")
