"""Evaluating a model or saved checkpoints on every dataset of ``DATASETS.TEST``."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ..config import CfgNode
from ..data.build import build_datasets, build_test_loader
from ..distributed import barrier, gather_objects, is_main, rank, world_size
from ..evaluation.coco import format_table, run_inference, score_results, to_coco_results, without_masks
from ..evaluation.voc import check_metric
from ..modeling import build_model
from ..checkpoint import load_checkpoint, load_whole

logger = logging.getLogger("sampling_free")


def evaluate_checkpoint_model(cfg: CfgNode, model, out_dir: str | Path, *, weights_name: str,
                              device: torch.device, class_names=None, name_source: str = "") -> dict:
    """Metrics per test dataset, written to ``out_dir/inference/<dataset>/<weights_name>/``. The test sets' classes
    are matched by name to ``class_names`` (the model's) when given, else to ``DATASETS.CLASS_NAMES``.

    Under torch.distributed every process runs inference on its share of the images; the detections are gathered
    and scored by the main process, whose metrics are returned (other processes get an empty dict)."""
    check_metric(cfg.TEST.VOC_METRIC)
    results = {}
    for dataset in build_datasets(cfg.DATASETS.TEST, cfg, training=False, class_names=class_names,
                                  name_source=name_source):
        folder = Path(out_dir) / "inference" / dataset.name.replace("/", "_").replace(":", "_") / weights_name
        loader = build_test_loader(cfg, dataset, rank=rank(), world_size=world_size())
        start = time.perf_counter()
        predictions = run_inference(model, loader, device)
        boxes, masks = to_coco_results(dataset, predictions)
        has_masks = any("masks" in p for p in predictions)
        shards = gather_objects((boxes, masks, [without_masks(p) for p in predictions], has_masks))
        if is_main():
            metrics = score_results(
                dataset, [r for s in shards for r in s[0]],
                [r for s in shards for r in s[1]] if any(s[3] for s in shards) else None,
                [p for s in shards for p in s[2]], folder, voc_metric=cfg.TEST.VOC_METRIC,
                seconds=time.perf_counter() - start)
            results[dataset.name] = metrics
            logger.info("%s on %s (%d images, %.1fs):\n%s", weights_name, dataset.name,
                        metrics["inference"]["images"], metrics["inference"]["seconds"], format_table(metrics))
        barrier()
    return results


def model_from_checkpoint(cfg: CfgNode, path: str | Path, device: torch.device, *, state: dict | None = None):
    """A model built from ``cfg`` with the checkpoint's weights (and so its prior π and class count); ``state``:
    the checkpoint already loaded."""
    state = load_checkpoint(path) if state is None else state
    num_classes = state.get("num_classes") or cfg.MODEL.NUM_CLASSES
    if not num_classes:
        raise ValueError(f"{path}: the checkpoint does not record its number of classes; set MODEL.NUM_CLASSES")
    model = build_model(cfg, num_classes)
    load_whole(model, state["model"], path,
               described=f"the model of this config ({cfg.MODEL.META_ARCHITECTURE}, {cfg.MODEL.BACKBONE.NAME})")
    if cfg.MODEL.SAMPLING_FREE.PRIOR is not None:
        model.prior.set(cfg.MODEL.SAMPLING_FREE.PRIOR)
    return model.to(device)


def evaluate_weights(cfg: CfgNode, weights: list[Path], out_dir: Path, device: torch.device) -> dict:
    summary = {}
    for path in weights:
        state = load_checkpoint(path)
        model = model_from_checkpoint(cfg, path, device, state=state)
        names = state.get("class_names")
        summary[str(path)] = evaluate_checkpoint_model(
            cfg, model, out_dir, weights_name=Path(path).stem, device=device, class_names=names,
            name_source=f"the classes of the model in {path}")
    logger.info("summary:\n%s", json.dumps({w: {d: m["bbox"] for d, m in r.items()} for w, r in summary.items()},
                                           indent=1))
    return summary
