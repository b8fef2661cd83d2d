"""``shapes``: the built-in, procedurally generated detection benchmark, written in real COCO format.

It exists so the whole pipeline (loaders, prior estimation, training, COCO evaluation) runs on a laptop CPU, on the
same code path as COCO (or, with ``layout="voc"``, as PASCAL VOC), with the imbalance that sampling heuristics exist for: most anchors are background,
classes are long-tailed, objects run from a few pixels to most of the image, clutter that is no class (strokes,
arcs, dots, and solid distractor shapes -- the hard negatives) sits on a textured background, objects overlap
(instance masks are the visible parts), and some images hold no object.
Everything is a pure function of (seed, split, image index): a given seed always yields the same annotations and
pixels.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

from ..files import write_text_atomic

logger = logging.getLogger(__name__)
VERSION = 2
CLASSES = ("circle", "rectangle", "triangle", "star", "ring", "cross")
# Long tail: the most frequent class is ~7x the rarest.
CLASS_FREQUENCY = (0.34, 0.24, 0.16, 0.12, 0.09, 0.05)
# ``minival``: images drawn from the same distribution on their own random streams (the split name keys the RNG),
# for choosing knobs (scales, clips, sampler sizes); ``val`` is the split results are reported on, never tuned on.
SPLITS = {"train": 1200, "val": 300, "minival": 300}
EMPTY_IMAGE_FRACTION = 0.05
MIN_OBJECT_SIZE, MAX_OBJECT_FRACTION = 8, 0.85
MAX_HIDDEN_FRACTION = 0.5  # an object may be covered by later ones up to this share of its area
DISTRACTORS = ("ellipse", "half_disc", "l_shape")  # solid shapes that are no class: hard negatives


@dataclass(frozen=True)
class Profile:
    """What a variant's images hold. ``shapes``: 1-10 objects from 8 px to most of a 160-224 px image.
    ``dense``: dozens of small objects (6-32 px) on a 256-320 px image -- aerial trees, cells, crowds."""
    short_side: tuple[int, int] = (160, 225)  # range of the shorter side (upper bound excluded)
    objects: tuple[int, int] = (1, 11)  # objects per image (upper bound excluded)
    object_sizes: tuple[float, float] | None = None  # px; None: MIN_OBJECT_SIZE to MAX_OBJECT_FRACTION of the image
    empty_fraction: float = EMPTY_IMAGE_FRACTION
    distractors: tuple[int, int] = (0, 4)
    splits: tuple[tuple[str, int], ...] = tuple(SPLITS.items())


PROFILES = {"shapes": Profile(),
            "dense": Profile(short_side=(256, 321), objects=(20, 61), object_sizes=(6.0, 32.0), empty_fraction=0.02,
                             distractors=(0, 10), splits=(("train", 600), ("val", 150), ("minival", 150)))}


def _shape_polygon(kind: str, cx: float, cy: float, size: float, rng: np.random.Generator) -> list:
    """Outline of one object of extent ``size`` as a list of (x, y) vertices."""
    angle = rng.uniform(0, 2 * math.pi)

    def ring_points(n, radius_fn, rotation):
        return [
            (cx + radius_fn(k) * math.cos(rotation + 2 * math.pi * k / n),
             cy + radius_fn(k) * math.sin(rotation + 2 * math.pi * k / n))
            for k in range(n)
        ]

    r = size / 2
    if kind in ("circle", "ring"):
        return ring_points(max(12, int(size)), lambda k: r, 0.0)
    if kind == "rectangle":
        aspect = rng.uniform(0.5, 1.0)
        w, h = (size, size * aspect) if rng.random() < 0.5 else (size * aspect, size)
        cos, sin = math.cos(angle * 0.25), math.sin(angle * 0.25)  # mild rotation, up to 90 degrees
        corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners]
    if kind == "triangle":
        return ring_points(3, lambda k: r, angle)
    if kind == "star":
        return ring_points(10, lambda k: r if k % 2 == 0 else r * 0.45, angle)
    if kind == "ellipse":  # clearly elongated, so never a circle
        aspect = rng.uniform(0.3, 0.55)
        return [(cx + r * math.cos(t) * math.cos(angle) - r * aspect * math.sin(t) * math.sin(angle),
                 cy + r * math.cos(t) * math.sin(angle) + r * aspect * math.sin(t) * math.cos(angle))
                for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    if kind == "half_disc":
        return [(cx + r * math.cos(angle + t), cy + r * math.sin(angle + t)) for t in np.linspace(0, math.pi, 16)]
    if kind == "l_shape":
        t = size / 3
        arms = [(-r, -r), (-r + t, -r), (-r + t, r - t), (r, r - t), (r, r), (-r, r)]
        cos, sin = math.cos(angle), math.sin(angle)
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in arms]
    if kind == "cross":
        t = size / 6
        arms = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t),
                (-t, -t)]
        cos, sin = math.cos(angle), math.sin(angle)
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in arms]
    raise ValueError(kind)


def _object_mask(kind: str, cx: float, cy: float, size: float, shape: tuple, rng) -> np.ndarray:
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon(_shape_polygon(kind, cx, cy, size, rng), fill=255)
    if kind == "ring":
        inner = size * rng.uniform(0.25, 0.35)
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    return np.asarray(canvas) > 0


def _background(rng, height: int, width: int) -> np.ndarray:
    """A colour gradient, low-frequency blotches and pixel noise: texture, not a flat canvas."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(40, 215, size=3), rng.uniform(40, 215, size=3)
    t = (xx * math.cos(rng.uniform(0, 6.3)) + yy * math.sin(rng.uniform(0, 6.3))) / max(height, width)
    image = c0 + (c1 - c0) * ((t - t.min()) / (np.ptp(t) + 1e-6))[..., None]
    blotches = rng.normal(0, 1, size=(max(2, height // 24), max(2, width // 24), 3)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(((blotches * 40) + 128).clip(0, 255).astype(np.uint8)).resize(
        (width, height), Image.BICUBIC), dtype=np.float32) - 128
    return image + blotches * 0.5 + rng.normal(0, 6, size=(height, width, 3))


def _draw_clutter(image: Image.Image, rng) -> None:
    """Things that are no class: strokes, arcs, dots and blurred blobs in random colours."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(rng.integers(2, 9)):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        kind = rng.integers(0, 3)
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        if kind == 0:
            draw.line([(x0, y0), (x0 + rng.normal(0, w / 4), y0 + rng.normal(0, h / 4))], fill=colour,
                      width=int(rng.integers(1, 4)))
        elif kind == 1:
            r = rng.uniform(8, max(9, min(w, h) / 3))
            start = rng.uniform(0, 360)
            draw.arc([x0 - r, y0 - r, x0 + r, y0 + r], start, start + rng.uniform(40, 200), fill=colour,
                     width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(1, 3)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)


def render_image(seed: int, split: str, index: int, profile: str = "shapes") -> tuple[Image.Image, list[dict]]:
    """One image and its objects (class index, visible mask). Pure function of its arguments."""
    p = PROFILES[profile]
    key = split if profile == "shapes" else f"{profile}_{split}"
    split_key = sum(ord(c) * 31 ** i for i, c in enumerate(key)) % 1_000_003
    rng = np.random.default_rng([seed, split_key, index])
    short = int(rng.integers(*p.short_side))
    long_side = int(short * rng.uniform(1.0, 1.4))
    height, width = (short, long_side) if rng.random() < 0.6 else (long_side, short)
    base = _background(rng, height, width)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    _draw_clutter(image, rng)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(*p.distractors)):
        size = math.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(0.5 * min(height, width))))
        kind = DISTRACTORS[rng.integers(len(DISTRACTORS))]
        draw.polygon(_shape_polygon(kind, rng.uniform(0, width), rng.uniform(0, height), size, rng),
                     fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
    pixels = np.asarray(image, dtype=np.float32).copy()

    objects: list[dict] = []
    n_objects = 0 if rng.random() < p.empty_fraction else int(rng.integers(*p.objects))
    min_size, max_size = p.object_sizes or (MIN_OBJECT_SIZE, MAX_OBJECT_FRACTION * min(height, width))
    for _ in range(n_objects):
        label = int(rng.choice(len(CLASSES), p=CLASS_FREQUENCY))
        for _attempt in range(20):
            size = math.exp(rng.uniform(math.log(min_size), math.log(max_size)))
            cx = rng.uniform(size * 0.3, width - size * 0.3)
            cy = rng.uniform(size * 0.3, height - size * 0.3)
            mask = _object_mask(CLASSES[label], cx, cy, size, (height, width), rng)
            if mask.sum() < 12:
                continue
            # Reject a placement that would hide too much of an object already there.
            if all(o["area0"] - (o["mask"] & ~mask).sum() <= MAX_HIDDEN_FRACTION * o["area0"] for o in objects):
                break
        else:
            continue
        for o in objects:
            o["mask"] &= ~mask
        local = base[mask].mean(axis=0)
        colour = rng.uniform(0, 255, size=3)
        while np.abs(colour - local).sum() < 120:  # visible against the background under it
            colour = rng.uniform(0, 255, size=3)
        shade = 1 + rng.normal(0, 0.04, size=(int(mask.sum()), 1))
        pixels[mask] = colour * shade
        objects.append({"label": label, "mask": mask, "area0": int(mask.sum())})
    pixels += rng.normal(0, 3, size=pixels.shape)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))
    return image, [o for o in objects if o["mask"].sum() >= 4]


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The continuous box (x0, y0, x1, y1) that covers the mask's pixels: pixel k spans [k, k + 1)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _annotation(obj: dict, image_id: int, ann_id: int) -> dict:
    mask = obj["mask"]
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    x0, y0, x1, y1 = _mask_box(mask)
    return {"id": ann_id, "image_id": image_id, "category_id": obj["label"] + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": int(mask.sum()), "iscrowd": 0, "segmentation": rle}


def write_split(out_dir: str | Path, split: str, num_images: int, *, seed: int = 0, profile: str = "shapes") -> Path:
    """Write ``<out>/<split>/*.jpg`` and ``<out>/annotations/instances_<split>.json``; returns the JSON path."""
    out_dir = Path(out_dir)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image, objects = render_image(seed, split, index, profile)
        file_name = f"{index:06d}.jpg"
        image.save(out_dir / split / file_name, quality=92)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        for obj in objects:
            annotations.append(_annotation(obj, image_id, len(annotations) + 1))
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    info = {"description": f"sampling-free built-in {profile} dataset v{VERSION}", "seed": seed, "version": VERSION}
    path = out_dir / "annotations" / f"instances_{split}.json"
    write_text_atomic(path, json.dumps({"info": info, "images": images, "annotations": annotations,
                                        "categories": categories}))
    return path


def _voc_xml(file_name: str, image: Image.Image, objects: list[dict]) -> ET.ElementTree:
    """A devkit annotation: 1-based inclusive pixel coordinates, so the covering box [x0, x1) is x0 + 1 .. x1."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "shapes"
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for key, value in (("width", image.width), ("height", image.height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        x0, y0, x1, y1 = _mask_box(obj["mask"])
        node = ET.SubElement(root, "object")
        for key, value in (("name", CLASSES[obj["label"]]), ("pose", "Unspecified"), ("truncated", "0"),
                           ("difficult", "0")):
            ET.SubElement(node, key).text = value
        box = ET.SubElement(node, "bndbox")
        for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, key).text = str(value)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_split_voc(out_dir: str | Path, split: str, num_images: int, *, seed: int = 0,
                    profile: str = "shapes") -> Path:
    """The same images and objects as ``write_split`` in the VOC devkit layout; returns the split list's path.

    Every split shares ``JPEGImages`` and ``Annotations``, so file ids carry the split (``val_000003``).
    ``classes.txt`` names the classes, which ``VOCDetection`` reads instead of the 20 VOC ones.
    """
    out_dir = Path(out_dir)
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    ids = []
    for index in range(num_images):
        image, objects = render_image(seed, split, index, profile)
        file_id = f"{split}_{index:06d}"
        image.save(out_dir / "JPEGImages" / f"{file_id}.jpg", quality=92)
        _voc_xml(f"{file_id}.jpg", image, objects).write(out_dir / "Annotations" / f"{file_id}.xml",
                                                         encoding="utf-8", xml_declaration=False)
        ids.append(file_id)
    path = out_dir / "ImageSets" / "Main" / f"{split}.txt"
    write_text_atomic(path, "".join(f"{i}\n" for i in ids))  # last, so a split list only names files that exist
    return path


def write_dataset(out_dir: str | Path, *, seed: int = 0, splits: dict[str, int] | None = None,
                  layout: str = "coco", profile: str = "shapes") -> Path:
    """Every split in COCO layout (``layout="coco"``) or in the VOC devkit layout (``layout="voc"``)."""
    if layout not in ("coco", "voc"):
        raise ValueError(f"layout {layout!r}: expected 'coco' or 'voc'")
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: expected one of {sorted(PROFILES)}")
    write = write_split if layout == "coco" else write_split_voc
    for split, count in (splits or dict(PROFILES[profile].splits)).items():
        write(out_dir, split, count, seed=seed, profile=profile)
    return Path(out_dir)


def ensure_shapes(root: str | Path, *, seed: int = 0, profile: str = "shapes") -> Path:
    """The cached dataset of a profile under ``root/shapes`` (``root/shapes_dense``...), generated on first use
    (atomically, by folder rename)."""
    name = "shapes" if profile == "shapes" else f"shapes_{profile}"
    target = Path(root) / name
    splits = dict(PROFILES[profile].splits)
    stamp = {"version": VERSION, "seed": seed, "splits": splits, **({"profile": profile} if profile != "shapes" else {})}
    stamp_file = target / "GENERATED.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return target
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    logger.info("generating the built-in %s dataset (%s) in %s", name, splits, target)
    try:
        os.chmod(tmp, 0o755)
        write_dataset(tmp, seed=seed, profile=profile)
        (tmp / "GENERATED.json").write_text(json.dumps(stamp))
        if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
            return target  # another process finished first and may be reading it: keep its files
        stale = tmp.with_name(tmp.name + "-stale")
        if target.exists():  # an older version: moved aside in one rename, deleted once ours is in place
            os.replace(target, stale)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not stamp_file.exists():
                raise
        shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
