"""Dataset names -> files. Catalog names resolve under a datasets root; ``coco:<json>:<dir>`` and
``voc:<devkit root>:<split>`` name any folder."""
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
# ``*_minival``: the validation splits every knob is chosen on; ``*_val``: the test splits results are reported on.
SHAPES_SPLITS = {f"{prefix}_{split}": (profile, split) for prefix, profile in (("shapes", "shapes"),
                                                                            ("shapes_dense", "dense"))
                 for split in ("train", "val", "minival")}
# name -> (devkit root, split), relative to the datasets root.
VOC_CATALOG = {
    **{f"voc_2007_{s}": ("voc/VOC2007", s) for s in ("train", "val", "trainval", "test")},
    **{f"voc_2012_{s}": ("voc/VOC2012", s) for s in ("train", "val", "trainval")},
}


@dataclass(frozen=True)
class DatasetSpec:
    """``kind`` "coco": an annotation JSON and its image folder. ``kind`` "voc": ``ann_file`` is the split list
    ``<root>/ImageSets/Main/<split>.txt`` and ``image_dir`` is ``<root>/JPEGImages``."""
    name: str
    ann_file: Path
    image_dir: Path
    kind: str = "coco"
    split: str = ""

    @property
    def devkit_root(self) -> Path:
        return self.image_dir.parent


def voc_spec(name: str, root: str | Path, split: str) -> DatasetSpec:
    root = Path(root)
    return DatasetSpec(name, root / "ImageSets" / "Main" / f"{split}.txt", root / "JPEGImages", kind="voc",
                       split=split)


def datasets_root(configured: str = "") -> Path:
    return Path(configured or os.environ.get(ENV_ROOT) or "datasets")


def known_names() -> list[str]:
    return sorted([*COCO_CATALOG, *SHAPES_SPLITS, *VOC_CATALOG])


def resolve(name: str, root: str | Path = "") -> DatasetSpec:
    """Find a dataset's files; the built-in ``shapes`` is generated on first use."""
    root = datasets_root(str(root))
    if name.startswith("coco:"):
        parts = name.split(":")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"dataset {name!r}: expected coco:<annotations.json>:<image folder>")
        return DatasetSpec(name, Path(parts[1]), Path(parts[2]))
    if name.startswith("voc:"):
        folder, _, split = name[len("voc:"):].rpartition(":")
        if not folder or not split:
            raise ValueError(f"dataset {name!r}: expected voc:<devkit root>:<split>, e.g. voc:/data/VOC2007:test")
        return voc_spec(name, folder, split)
    if name in SHAPES_SPLITS:
        profile, split = SHAPES_SPLITS[name]
        folder = shapes.ensure_shapes(root, profile=profile)
        return DatasetSpec(name, folder / "annotations" / f"instances_{split}.json", folder / split)
    if name in COCO_CATALOG:
        ann, images = COCO_CATALOG[name]
        spec = DatasetSpec(name, root / ann, root / images)
        if not spec.ann_file.exists():
            raise FileNotFoundError(
                f"dataset {name!r}: {spec.ann_file} not found. Put COCO under {root} (coco/annotations, "
                f"coco/train2017, coco/val2017) or point ${ENV_ROOT} / DATASETS.ROOT at the folder that holds it")
        return spec
    if name in VOC_CATALOG:
        folder, split = VOC_CATALOG[name]
        spec = voc_spec(name, root / folder, split)
        if not spec.ann_file.exists():
            raise FileNotFoundError(
                f"dataset {name!r}: {spec.ann_file} not found. Put the VOC devkit folders under {root / 'voc'} "
                f"(voc/VOC2007, voc/VOC2012, each with Annotations, ImageSets, JPEGImages) or point ${ENV_ROOT} / "
                f"DATASETS.ROOT at the folder that holds voc/")
        return spec
    import difflib

    near = difflib.get_close_matches(name, known_names(), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ValueError(f"unknown dataset {name!r}{hint} Known: {known_names()}, or coco:<annotations.json>:<images>, "
                     f"or voc:<devkit root>:<split>")
