"""Evaluating a model or saved checkpoints on every dataset of ``DATASETS.TEST``."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import CfgNode
from ..data.build import build_datasets, build_test_loader
from ..evaluation.coco import evaluate_dataset, format_table
from ..modeling import build_model
from .checkpoint import load_checkpoint

logger = logging.getLogger("sampling_free")


def evaluate_checkpoint_model(cfg: CfgNode, model, out_dir: str | Path, *, weights_name: str,
                              device: torch.device) -> dict:
    """Metrics per test dataset, written to ``out_dir/inference/<dataset>/<weights_name>/``."""
    results = {}
    for dataset in build_datasets(cfg.DATASETS.TEST, cfg, training=False):
        folder = Path(out_dir) / "inference" / dataset.name.replace("/", "_").replace(":", "_") / weights_name
        loader = build_test_loader(cfg, dataset)
        metrics = evaluate_dataset(model, dataset, loader, device, folder, voc_metric=cfg.TEST.VOC_METRIC)
        results[dataset.name] = metrics
        logger.info("%s on %s (%d images, %.1fs):\n%s", weights_name, dataset.name, metrics["inference"]["images"],
                    metrics["inference"]["seconds"], format_table(metrics))
    return results


def model_from_checkpoint(cfg: CfgNode, path: str | Path, device: torch.device):
    """A model built from ``cfg`` with the checkpoint's weights (and so its prior π and class count)."""
    state = load_checkpoint(path)
    num_classes = state.get("num_classes") or cfg.MODEL.NUM_CLASSES
    if not num_classes:
        raise ValueError(f"{path}: the checkpoint does not record its number of classes; set MODEL.NUM_CLASSES")
    model = build_model(cfg, num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the model of this config ({cfg.MODEL.META_ARCHITECTURE}, "
                         f"{cfg.MODEL.BACKBONE.NAME}): {str(exc).splitlines()[0]}") from None
    if cfg.MODEL.SAMPLING_FREE.PRIOR is not None:
        model.prior.set(cfg.MODEL.SAMPLING_FREE.PRIOR)
    return model.to(device)


def evaluate_weights(cfg: CfgNode, weights: list[Path], out_dir: Path, device: torch.device) -> dict:
    summary = {}
    for path in weights:
        model = model_from_checkpoint(cfg, path, device)
        summary[str(path)] = evaluate_checkpoint_model(cfg, model, out_dir, weights_name=Path(path).stem,
                                                       device=device)
    logger.info("summary:\n%s", json.dumps({w: {d: m["bbox"] for d, m in r.items()} for w, r in summary.items()},
                                           indent=1))
    return summary
