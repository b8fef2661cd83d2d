"""``sampling_free.convert``: sampling-free training for a torchvision detector you already have, in your own loop.

    model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, num_classes=4)
    model = sampling_free.convert(model, annotations="train.json")   # π counted for this model
    loss_dict = model(images, targets)                               # the torchvision contract, unchanged

The converted model is built on the stock model's own modules (every weight is kept; only the classification and
objectness biases are set from π), and changes exactly what our families change: plain BCE over every non-ignored
anchor / every RoI instead of focal loss and samplers, the bias from π, guided loss scaling, the adaptive test
threshold. Each family's file says how (``modeling/retinanet.py``, ``fcos.py``, ``rcnn.py``: ``from_torchvision``).
"""
from __future__ import annotations

from pathlib import Path

from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from .modeling import Switches, from_torchvision
from .modeling.contract import is_sampling_free
from .prior import prior_with_counts, setting_from_transform

SWITCH_DEFAULTS = {"no_heuristic": True, "bias_init": True, "guided_loss": True, "adaptive_threshold": True,
                   "sync_guided_ratio": False, "guided_warmup_iters": 0, "learned_loss_weights": False}


def convert(model, *, annotations=None, prior: float | None = None, classification_scale: float | None = None,
            hflip_prob: float = 0.5, **switches):
    """A sampling-free version of a stock torchvision detector, on the same modules and weights.

    ``annotations`` (a COCO JSON path, ``voc:<root>:<split>``, or a dataset of ``(image, target)``) to count π
    with this model's own transform, anchors and matcher, or ``prior`` to give it. ``classification_scale``: the
    guided scale (default 1 for RetinaNet / FCOS, 2 for the R-CNN box head; the RPN's is 1). ``switches``: any of
    ``no_heuristic``, ``bias_init``, ``guided_loss``, ``adaptive_threshold`` (each True by default: turn one off for
    an ablation), ``sync_guided_ratio``, ``guided_warmup_iters``, ``learned_loss_weights``. ``hflip_prob``: the
    horizontal-flip probability of your training augmentation, which π's count follows."""
    unknown = sorted(set(switches) - set(SWITCH_DEFAULTS))
    if unknown:
        raise TypeError(f"convert() got unknown switch(es) {unknown}; known: {sorted(SWITCH_DEFAULTS)}")
    values = {**SWITCH_DEFAULTS, **switches}
    default_scale = 2.0 if isinstance(model, GeneralizedRCNN) else 1.0
    chosen = Switches(no_heuristic=values["no_heuristic"], bias_init=values["bias_init"],
                      guided_loss=values["guided_loss"], adaptive_threshold=values["adaptive_threshold"],
                      classification_scale=default_scale if classification_scale is None else classification_scale,
                      sync_guided_ratio=values["sync_guided_ratio"],
                      guided_warmup_iters=values["guided_warmup_iters"] if values["guided_loss"] else 0,
                      learned_loss_weights=bool(values["learned_loss_weights"] and values["guided_loss"]))
    converted = from_torchvision(model, chosen)
    if prior is None and annotations is not None:
        prior = estimate_prior(converted, annotations, hflip_prob=hflip_prob)
    if prior is None and chosen.needs_prior:
        raise ValueError("convert() needs the prior for bias_init / adaptive_threshold: give annotations= (the "
                         "training annotations, to count it) or prior= (a value)")
    if prior is not None:
        converted.set_prior(prior)
    return converted


def estimate_prior(model, annotations, *, hflip_prob: float = 0.5) -> float:
    """π for ``model`` (stock or converted) on ``annotations``: its anchors labelled by its matcher, at the sizes
    its transform resizes training images to, both flips weighted by ``hflip_prob``; no image is decoded for
    annotation files."""
    everything_on = Switches(no_heuristic=True, bias_init=True, guided_loss=True, adaptive_threshold=True,
                             classification_scale=1.0)
    converted = model if is_sampling_free(model) else from_torchvision(model, everything_on)
    setting = setting_from_transform(converted.transform, hflip_prob=hflip_prob, detector=type(model).__name__)
    return prior_with_counts(converted, [_annotations(annotations)], setting)["prior"]


def _annotations(annotations):
    """The annotations as a dataset giving image sizes and boxes (``COCODetection``'s interface)."""
    from .data.catalog import resolve
    from .data.coco import COCODetection
    from .data.voc import VOCDetection

    if isinstance(annotations, (str, Path)):
        text = str(annotations)
        if text.startswith("voc:"):
            spec = resolve(text)
            return VOCDetection(spec.devkit_root, spec.split, training=True, name=text)
        return COCODetection(text, None, training=True)
    if hasattr(annotations, "image_size") and hasattr(annotations, "annotations"):
        return annotations
    return DatasetAnnotations(annotations)


class DatasetAnnotations:
    """Sizes and boxes of a dataset of ``(image, target)`` pairs, read once: ``target`` a dict with ``boxes``
    (x1, y1, x2, y2) and ``labels`` (torchvision's detection tutorial), or a list of COCO annotation dicts
    (``torchvision.datasets.CocoDetection``). Images are decoded once, by the dataset itself."""

    def __init__(self, dataset):
        import numpy as np
        import torch

        self.name = type(dataset).__name__
        self.sizes, self.boxes, self.labels = [], [], []
        for index in range(len(dataset)):
            image, target = dataset[index]
            height, width = (image.shape[-2:] if torch.is_tensor(image) else (image.height, image.width))
            if isinstance(target, dict):
                boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4).numpy()
                labels = torch.as_tensor(target["labels"], dtype=torch.int64).numpy()
            else:
                kept = [a for a in target if not a.get("iscrowd", 0)]
                boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in kept)],
                                   dtype=np.float32).reshape(-1, 4)
                labels = np.asarray([a["category_id"] for a in kept], dtype=np.int64)
            self.sizes.append((int(height), int(width)))
            self.boxes.append(boxes)
            self.labels.append(labels)

    def __len__(self) -> int:
        return len(self.sizes)

    def image_size(self, index: int) -> tuple[int, int]:
        return self.sizes[index]

    def annotations(self, index: int):
        return self.boxes[index], self.labels[index]
