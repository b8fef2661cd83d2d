"""The Python API: ``Detector`` (a trained model for inference) and ``train`` (the ``sampling-free train`` command).

Examples: ``docs/python_api.md`` (a test runs them)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from .config import CfgNode, find_config, load_config

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
ImageLike = Union[torch.Tensor, Image.Image, str, Path]


def _as_config(config) -> CfgNode:
    return config if isinstance(config, CfgNode) else load_config(find_config(config))


def _without_imagenet_weights(cfg: CfgNode) -> CfgNode:
    """``cfg`` building the same model without reading (or downloading) ImageNet backbone weights that the
    checkpoint overwrites anyway; the normalisation layer they imply is kept (``NORM: auto``)."""
    flat: dict[str, Any] = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(cfg, "")
    b = cfg.MODEL.BACKBONE
    norm = ("FrozenBN" if b.WEIGHTS else "BN") if b.NORM == "auto" else b.NORM
    return load_config(values={**flat, "MODEL.BACKBONE.WEIGHTS": "", "MODEL.BACKBONE.NORM": norm})


def load_image(image: ImageLike, *, index: int | None = None) -> torch.Tensor:
    """A CHW float tensor in [0, 1], RGB, from a file path, a PIL image, or a CHW tensor (uint8, or float 0-1)."""
    where = "" if index is None else f"image {index}: "
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image file not found")
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except OSError as exc:
            raise ValueError(f"{path}: cannot read image ({exc})") from None
    if isinstance(image, Image.Image):
        return pil_to_tensor(image.convert("RGB")).float().div_(255)
    if not torch.is_tensor(image):
        raise TypeError(f"{where}expected a tensor, a PIL image or a file path, got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        hint = "; pass a batch as a list of CHW tensors" if image.dim() == 4 else ""
        raise ValueError(f"{where}expected a CHW tensor with 3 (RGB) channels, got shape {tuple(image.shape)}{hint}")
    if image.dtype == torch.uint8:
        return image.float().div_(255)
    if not image.is_floating_point():
        raise ValueError(f"{where}expected a uint8 or float tensor, got {image.dtype}")
    if image.numel() and (image.min() < 0 or image.max() > 1):
        raise ValueError(f"{where}float images must be scaled to [0, 1] (got values in [{float(image.min()):.3g}, "
                         f"{float(image.max()):.3g}]); divide 0-255 values by 255")
    return image.float()


def image_files(inputs: list[str | Path]) -> list[Path]:
    """The files given, and every image directly inside the folders given (sorted by name)."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise FileNotFoundError(f"{item}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image file or folder")
    return files


class Detector:
    """A detector ready for inference, with its class names; ``predict`` turns images into detections."""

    def __init__(self, model: torch.nn.Module, *, cfg: CfgNode, class_names: list[str] | None = None,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        names = list(class_names or [])[: model.num_classes]
        # MODEL.NUM_CLASSES may exceed the dataset's classes: the extra ones are named by their label
        self.class_names = names + [str(k) for k in range(len(names) + 1, model.num_classes + 1)]

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, config: str | Path | CfgNode | None = None,
                        device: str | torch.device = "cpu") -> "Detector":
        """A checkpoint written by training; ``config`` defaults to the ``config.yaml`` of its run folder."""
        from .checkpoint import load_checkpoint
        from .engine.evaluator import model_from_checkpoint
        from .engine.runtime import resolve_device

        path = Path(path)
        if config is None:
            config = path.parent / "config.yaml"
            if not config.is_file():
                raise FileNotFoundError(f"{config}: not found; pass config= (the config {path.name} was trained "
                                        "with)")
        cfg = _as_config(config)
        device = resolve_device(str(device))
        state = load_checkpoint(path)
        model = model_from_checkpoint(_without_imagenet_weights(cfg), path, device, state=state)
        return cls(model, cfg=cfg, class_names=state.get("class_names"), device=device)

    @classmethod
    def from_config(cls, config: str | Path | CfgNode, *, num_classes: int, weights: str | Path | None = None,
                    class_names: list[str] | None = None, device: str | torch.device = "cpu") -> "Detector":
        """A model built from ``config`` for ``num_classes`` classes, with ``weights`` (a checkpoint, which must
        fit) or untrained (its prior π then comes from ``MODEL.SAMPLING_FREE.PRIOR``, if set)."""
        from .checkpoint import load_checkpoint
        from .engine.evaluator import model_from_checkpoint
        from .engine.runtime import resolve_device
        from .modeling import build_model

        cfg = _as_config(config)
        device = resolve_device(str(device))
        if weights is None:
            model = build_model(cfg, num_classes)
            if cfg.MODEL.SAMPLING_FREE.PRIOR is not None:
                model.prior.set(cfg.MODEL.SAMPLING_FREE.PRIOR)
            return cls(model, cfg=cfg, class_names=class_names, device=device)
        state = load_checkpoint(weights)
        if state.get("num_classes") not in (None, num_classes):
            raise ValueError(f"{weights}: the checkpoint has {state['num_classes']} classes, not {num_classes}")
        model = model_from_checkpoint(_without_imagenet_weights(cfg), weights, device, state=state)
        return cls(model, cfg=cfg, class_names=class_names or state.get("class_names"), device=device)

    @torch.no_grad()
    def predict(self, images: ImageLike | list[ImageLike]) -> dict | list[dict]:
        """Detections for one image (a dict) or for a list of images (a list of dicts), with the model's own test
        thresholds: ``boxes`` (N, 4) x1 y1 x2 y2 in the image's pixels, ``scores`` (N,), ``labels`` (N,) in 1..C,
        ``class_names`` (N names), and for mask models ``masks`` (N, H, W) bool (probability > 0.5).

        Images run one at a time, so an image's detections never depend on which others share its call (a batch
        pads every image to the largest, which shifts the features near the padded borders)."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        results = []
        for i, image in enumerate(batch):
            tensor = load_image(image, index=None if single else i).to(self.device)
            out = {k: v.cpu() for k, v in self.model([tensor])[0].items()}
            result = {"boxes": out["boxes"], "scores": out["scores"], "labels": out["labels"],
                      "class_names": [self.class_names[k - 1] for k in out["labels"].tolist()]}
            if "masks" in out:
                result["masks"] = out["masks"][:, 0] > 0.5
            results.append(result)
        return results[0] if single else results

    def __repr__(self) -> str:
        return (f"Detector({type(self.model).__name__}, {self.cfg.MODEL.BACKBONE.NAME}, "
                f"{len(self.class_names)} classes, {self.device})")


def train(config_file: str | Path | None = None, *, overrides: dict[str, Any] | None = None,
          evaluate: bool = True) -> dict:
    """``sampling-free train`` from Python: the config (default: the quickstart) with ``overrides``
    ({"SOLVER.MAX_ITER": 100}); returns the final evaluation's metrics per test dataset (empty without one)."""
    from .engine.trainer import run_training

    path = find_config(config_file)
    cfg = load_config(path, values=overrides or {})
    return run_training(cfg, config_file=str(path), evaluate=evaluate)
