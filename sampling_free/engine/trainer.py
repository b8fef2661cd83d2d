"""Iteration-based training: data -> model -> SGD, with logs, atomic checkpoints, resume and final evaluation.

One process, or one per device under ``torchrun`` (DistributedDataParallel; ``SOLVER.IMS_PER_BATCH`` stays the global
batch). Nothing is lost: checkpoints are written atomically every ``SOLVER.CHECKPOINT_PERIOD`` iterations and on
SIGTERM/SIGINT, a run resumes from ``last_checkpoint`` at the same schedule position, data order and RNG state, and a
non-finite loss stops training before the optimizer step, leaving the last good checkpoint as it was.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .. import distributed as dist
from ..config import CfgNode, save_config, with_values
from ..data.build import batches, build_datasets, build_train_loader
from ..mechanism import class_priors_from_counts
from ..modeling import build_model
from ..files import write_json_atomic
from ..prior import config_prior, prior_with_counts, setting_from_config
from ..records import note_source
from ..checkpoint import find_resumable, load_checkpoint, load_fitting, load_whole, save_checkpoint
from .evaluator import evaluate_checkpoint_model
from .runtime import MetricsWriter, ensure_writable, resolve_device, setup_logging
from .solver import build_optimizer, build_scheduler

logger = logging.getLogger("sampling_free")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_output_dir(cfg: CfgNode, config_file: str | None) -> Path:
    """``output/<config name>``, with ``_free`` when sampling-free is on, as the original's ``backup/<cfg>_free``."""
    if cfg.OUTPUT_DIR:
        return Path(cfg.OUTPUT_DIR)
    name = Path(config_file).stem if config_file else "default"
    return Path("output") / (name + ("_free" if cfg.MODEL.SAMPLING_FREE_ON else ""))


def prepare_model(cfg: CfgNode, datasets, out_dir: Path | None):
    """Model with π recorded (and the bias set from it when enabled); writes ``prior.json``: the counts behind π
    and what the model reports doing with it."""
    first = datasets[0]
    num_classes = cfg.MODEL.NUM_CLASSES or first.num_classes
    if num_classes < first.num_classes:
        raise ValueError(f"MODEL.NUM_CLASSES={num_classes} but {first.name} has {first.num_classes} classes")
    model = build_model(cfg, num_classes)
    if cfg.MODEL.SAMPLING_FREE.PRIOR is not None:
        prior = config_prior(cfg.MODEL.SAMPLING_FREE.PRIOR)
    else:
        prior = prior_with_counts(model, datasets, setting_from_config(cfg, model), class_names=first.class_names)
    per_class = None
    if model.switches.per_class_prior and "foreground_per_class" in prior:
        per_class = class_priors_from_counts(list(prior["foreground_per_class"].values()), prior["num_background"])
    model.set_prior(prior["prior"], per_class=per_class)
    record = {**prior, **model.describe_prior()}
    if out_dir is not None and dist.is_main():
        write_json_atomic(out_dir / "prior.json", record)
    sampled = "" if record.get("prior_standard_error") is None else \
        f" ± {record['prior_standard_error']:.2g} ({record['images']} of {record['images_in_dataset']} images)"
    logger.info("prior π=%.3g%s from %s; the model: %s", record["prior"], sampled, record["source"],
                ", ".join(f"{k} {_short(v)}" for k, v in model.describe_prior().items() if k != "prior"))
    return model, record


def _short(value):
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.3g}" for v in value) + "]"
    return f"{value:.3g}" if isinstance(value, float) else value


def _check_amp(cfg: CfgNode, device: torch.device):
    if cfg.SOLVER.AMP and device.type != "cuda":
        raise ValueError(f"SOLVER.AMP={cfg.SOLVER.AMP!r} needs a CUDA device (MODEL.DEVICE is {cfg.MODEL.DEVICE!r}); "
                         "set SOLVER.AMP '' on the CPU")
    return AMP_DTYPES.get(cfg.SOLVER.AMP)


class _StopRequest:
    """SIGTERM / SIGINT ask for a checkpoint at the end of the current iteration, then a clean exit."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, device) -> bool:
        """Whether any process was signalled (all processes must stop at the same iteration)."""
        if not dist.is_distributed():
            return bool(self.signum)
        return bool(dist.mean_over_ranks(torch.tensor([float(self.signum)], device=device)) > 0)


def gradient_clip(cfg: CfgNode, switches) -> float:
    """The gradient-norm clip of this run (0: none): ``SOLVER.CLIP_GRAD_NORM`` for every run, else
    ``MODEL.SAMPLING_FREE.CLIP_GRAD_NORM`` when the guided loss is on -- a guard for the sampling-free run that
    leaves the heuristic it is compared with as it was."""
    if cfg.SOLVER.CLIP_GRAD_NORM > 0:
        return cfg.SOLVER.CLIP_GRAD_NORM
    return cfg.MODEL.SAMPLING_FREE.CLIP_GRAD_NORM if switches.guided_loss else 0.0


def run_training(cfg: CfgNode, *, config_file: str | None = None, evaluate: bool = True) -> dict:
    """Train ``cfg`` (resuming its run folder when it holds a checkpoint), then evaluate on ``DATASETS.TEST``; the
    engine behind ``sampling-free train`` and ``sampling_free.train``. Returns the metrics per test dataset."""
    device = resolve_device(cfg.MODEL.DEVICE)
    device = dist.init_from_environment(device.type) or device
    amp_dtype = _check_amp(cfg, device)
    out_dir = default_output_dir(cfg, config_file)
    cfg = with_values(cfg, {"OUTPUT_DIR": str(out_dir)})  # config.yaml records where its run lives
    if dist.is_main():
        ensure_writable(out_dir)
    dist.barrier()
    setup_logging(out_dir if dist.is_main() else None)
    torch.manual_seed(cfg.SEED)
    logger.info("training in %s on %s (%d process%s)", out_dir, device, dist.world_size(),
                "es" if dist.world_size() > 1 else "")

    datasets = build_datasets(cfg.DATASETS.TRAIN, cfg, training=True, with_masks=cfg.MODEL.MASK_ON)
    # the class names trained on, in label order: the test sets are matched to them by name, and config.yaml keeps them
    cfg = with_values(cfg, {"DATASETS.CLASS_NAMES": list(datasets[0].class_names)})
    if dist.is_main():
        save_config(cfg, out_dir / "config.yaml")
    model, _ = prepare_model(cfg, datasets, out_dir)
    logger.info("%s with %s", type(model).__name__, model.switches)
    model.to(device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)

    start_iter = 0
    resume_from = find_resumable(out_dir)
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        load_whole(model, state["model"], resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        start_iter = int(state["iteration"])
        logger.info("resumed from %s at iteration %d", resume_from, start_iter)
    elif cfg.MODEL.WEIGHT:
        load_fitting(model, cfg.MODEL.WEIGHT)
    if dist.is_main() and start_iter < cfg.SOLVER.MAX_ITER:
        note_source(out_dir, start_iter)

    class_names = datasets[0].class_names

    def checkpoint_state(iteration: int) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "scheduler": scheduler.state_dict(), "iteration": iteration, "torch_rng": torch.get_rng_state(),
                "num_classes": model.num_classes, "class_names": class_names}

    if start_iter < cfg.SOLVER.MAX_ITER:
        _train_loop(cfg, model, optimizer, scheduler, scaler, amp_dtype, datasets, device, out_dir, start_iter,
                    checkpoint_state)
    elif dist.is_main() and not (out_dir / "model_final.pth").exists():
        save_checkpoint(out_dir, "model_final.pth", checkpoint_state(cfg.SOLVER.MAX_ITER))
    results = {}
    if evaluate and cfg.DATASETS.TEST:
        results = evaluate_checkpoint_model(cfg, model, out_dir, weights_name="model_final", device=device)
    dist.cleanup()
    return results


def _train_loop(cfg, model, optimizer, scheduler, scaler, amp_dtype, datasets, device, out_dir, start_iter,
                checkpoint_state):
    s = cfg.SOLVER
    clip = gradient_clip(cfg, model.switches)
    if clip > 0:
        logger.info("gradient norm clipped at %g", clip)
    loader = build_train_loader(cfg, datasets, start_iter=start_iter, rank=dist.rank(),
                                world_size=dist.world_size())
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if dist.is_distributed() else model
    model.train()
    metrics = MetricsWriter(out_dir, start_iter, enabled=dist.is_main(), tensorboard=cfg.TENSORBOARD)
    bar = tqdm(total=s.MAX_ITER, initial=start_iter, desc="train", dynamic_ncols=True,
               disable=None if dist.is_main() else True)
    autocast = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    def save(name: str, iteration: int) -> None:
        if dist.is_main():
            save_checkpoint(out_dir, name, checkpoint_state(iteration))
        dist.barrier()

    with logging_redirect_tqdm(), _StopRequest() as stop, batches(loader) as data_iter:
        try:
            for iteration in range(start_iter, s.MAX_ITER):
                t0 = time.perf_counter()
                images, targets = next(data_iter)
                metrics.add_data_time(time.perf_counter() - t0)
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
                with autocast:
                    losses = ddp(images, targets)
                total = sum(losses.values())
                for name, value in losses.items():
                    if not math.isfinite(float(value.detach())):
                        raise FloatingPointError(
                            f"iteration {iteration + 1}: {name} is {float(value.detach())}; training stopped before the "
                            f"update. The last good checkpoint in {out_dir} is intact (lower SOLVER.BASE_LR, or clip "
                            f"the gradient: SOLVER.CLIP_GRAD_NORM, or MODEL.SAMPLING_FREE.CLIP_GRAD_NORM for "
                            f"sampling-free runs alone)")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                step_stats = {}
                if clip > 0:  # log the norm before clipping, and how often it was clipped
                    scaler.unscale_(optimizer)
                    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
                    step_stats = {"grad_norm": norm, "grad_clipped": float(norm > clip)}
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                done = iteration + 1
                bar.update(1)
                if dist.is_distributed():  # log the whole batch's losses, not this process's share
                    losses = dict(zip(losses, dist.mean_over_ranks(torch.stack([v.detach() for v in losses.values()]))))
                record = metrics.add(done, losses, {**getattr(model, "training_stats", {}), **step_stats},
                                     lr=optimizer.param_groups[0]["lr"], last=done == s.MAX_ITER,
                                     period=s.LOG_PERIOD, max_iter=s.MAX_ITER)
                if record:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2g}")
                    logger.info("iter %d/%d  loss %.4f  %s  lr %.3g  %.3fs/it  eta %ds", done, s.MAX_ITER,
                                record["loss"], "  ".join(f"{k} {record[k]:.4f}" for k in losses), record["lr"],
                                record["time"], record["eta_seconds"])
                if stop.requested(device):
                    save(f"model_{done:07d}.pth", done)
                    logger.warning("stopped by signal %d after iteration %d; checkpoint written. Run the same "
                                   "command again to resume.", stop.signum, done)
                    raise SystemExit(128 + (stop.signum or signal.SIGTERM))
                if done % s.CHECKPOINT_PERIOD == 0 and done < s.MAX_ITER:
                    save(f"model_{done:07d}.pth", done)
            save("model_final.pth", s.MAX_ITER)
        finally:
            bar.close()
            metrics.close()
