"""Iteration-based training: data -> model -> SGD, with logs, atomic checkpoints, resume and final evaluation."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..config import CfgNode, save_config
from ..data.build import build_datasets, build_train_loader
from ..modeling import build_model
from ..prior import config_prior, estimate_prior, write_json_atomic
from .checkpoint import last_checkpoint, load_checkpoint, save_checkpoint
from .evaluator import evaluate_checkpoint_model
from .runtime import resolve_device, setup_logging
from .solver import build_optimizer, build_scheduler

logger = logging.getLogger("sampling_free")


def default_output_dir(cfg: CfgNode, config_file: str | None) -> Path:
    """``output/<config name>``, with ``_free`` when sampling-free is on, as the original's ``backup/<cfg>_free``."""
    if cfg.OUTPUT_DIR:
        return Path(cfg.OUTPUT_DIR)
    name = Path(config_file).stem if config_file else "default"
    return Path("output") / (name + ("_free" if cfg.MODEL.SAMPLING_FREE_ON else ""))


def prepare_model(cfg: CfgNode, datasets, out_dir: Path | None):
    """Model with π recorded (and the bias set from it when enabled); writes ``prior.json``."""
    first = datasets[0]
    num_classes = cfg.MODEL.NUM_CLASSES or first.num_classes
    if num_classes < first.num_classes:
        raise ValueError(f"MODEL.NUM_CLASSES={num_classes} but {first.name} has {first.num_classes} classes")
    model = build_model(cfg, num_classes)
    if cfg.MODEL.SAMPLING_FREE.PRIOR is not None:
        prior = config_prior(cfg.MODEL.SAMPLING_FREE.PRIOR, model.prior_counter().num_classes)
    else:
        prior = estimate_prior(model, datasets, cfg, class_names=first.class_names)
    model.set_prior(prior["prior"])
    if out_dir is not None:
        write_json_atomic(out_dir / "prior.json", prior)
    logger.info("prior π=%.3g (bias %.3f, adaptive threshold %.3g) from %s", prior["prior"], prior["bias"],
                prior["score_threshold"], prior["source"])
    return model, prior


def _load_initial_weights(model, path: str) -> None:
    state = load_checkpoint(path)["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    logger.info("initialised from %s (missing %d keys, unexpected %d)", path, len(missing), len(unexpected))


def train(cfg: CfgNode, *, config_file: str | None = None, evaluate: bool = True) -> dict:
    out_dir = default_output_dir(cfg, config_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir)
    save_config(cfg, out_dir / "config.yaml")
    device = resolve_device(cfg.MODEL.DEVICE)
    torch.manual_seed(cfg.SEED)
    logger.info("training in %s on %s", out_dir, device)

    datasets = build_datasets(cfg.DATASETS.TRAIN, cfg, training=True, with_masks=cfg.MODEL.MASK_ON)
    model, _ = prepare_model(cfg, datasets, out_dir)
    logger.info("%s with %s", type(model).__name__, model.switches)
    model.to(device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)

    start_iter = 0
    resume_from = last_checkpoint(out_dir)
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_iter = int(state["iteration"])
        logger.info("resumed from %s at iteration %d", resume_from, start_iter)
    elif cfg.MODEL.WEIGHT:
        _load_initial_weights(model, cfg.MODEL.WEIGHT)

    class_names = datasets[0].class_names

    def checkpoint_state(iteration: int) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "iteration": iteration, "torch_rng": torch.get_rng_state(),
                "num_classes": model.num_classes, "class_names": class_names}

    max_iter = cfg.SOLVER.MAX_ITER
    if start_iter < max_iter:
        _train_loop(cfg, model, optimizer, scheduler, datasets, device, out_dir, start_iter, checkpoint_state)
    if not (out_dir / "model_final.pth").exists():
        save_checkpoint(out_dir, "model_final.pth", checkpoint_state(max_iter))
    results = {}
    if evaluate and cfg.DATASETS.TEST:
        results = evaluate_checkpoint_model(cfg, model, out_dir, weights_name="model_final", device=device)
    return results


def _train_loop(cfg, model, optimizer, scheduler, datasets, device, out_dir, start_iter, checkpoint_state):
    s = cfg.SOLVER
    loader = build_train_loader(cfg, datasets, start_iter=start_iter)
    model.train()
    metrics_file = open(out_dir / "metrics.jsonl", "a")
    window: dict[str, float] = {}
    window_n, window_start, data_time = 0, time.perf_counter(), 0.0
    bar = tqdm(total=s.MAX_ITER, initial=start_iter, desc="train", dynamic_ncols=True, disable=None)
    data_iter = iter(loader)
    with logging_redirect_tqdm():
        try:
            for iteration in range(start_iter, s.MAX_ITER):
                t0 = time.perf_counter()
                images, targets = next(data_iter)
                data_time += time.perf_counter() - t0
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
                losses = model(images, targets)
                total = sum(losses.values())
                for name, value in losses.items():
                    if not math.isfinite(float(value.detach())):
                        raise FloatingPointError(
                            f"iteration {iteration + 1}: {name} is {float(value)}; training stopped. The last good "
                            f"checkpoint in {out_dir} is intact (lower SOLVER.BASE_LR or set SOLVER.CLIP_GRAD_NORM)")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if s.CLIP_GRAD_NORM > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s.CLIP_GRAD_NORM)
                optimizer.step()
                scheduler.step()
                done = iteration + 1
                for name, value in losses.items():
                    window[name] = window.get(name, 0.0) + float(value.detach())
                for name, value in getattr(model, "training_stats", {}).items():
                    window[name] = window.get(name, 0.0) + value
                window["loss"] = window.get("loss", 0.0) + float(total.detach())
                window_n += 1
                bar.update(1)
                if done % s.LOG_PERIOD == 0 or done == s.MAX_ITER:
                    elapsed = time.perf_counter() - window_start
                    record = {"iteration": done, "lr": optimizer.param_groups[0]["lr"],
                              **{k: v / window_n for k, v in window.items()},
                              "time": elapsed / window_n, "data_time": data_time / window_n,
                              "eta_seconds": round(elapsed / window_n * (s.MAX_ITER - done), 1)}
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2g}")
                    logger.info("iter %d/%d  loss %.4f  %s  lr %.3g  %.3fs/it  eta %ds", done, s.MAX_ITER,
                                record["loss"], "  ".join(f"{k} {record[k]:.4f}" for k in losses),
                                record["lr"], record["time"], record["eta_seconds"])
                    window, window_n, window_start, data_time = {}, 0, time.perf_counter(), 0.0
                if done % s.CHECKPOINT_PERIOD == 0 and done < s.MAX_ITER:
                    save_checkpoint(out_dir, f"model_{done:07d}.pth", checkpoint_state(done))
            save_checkpoint(out_dir, "model_final.pth", checkpoint_state(s.MAX_ITER))
        finally:
            bar.close()
            metrics_file.close()
