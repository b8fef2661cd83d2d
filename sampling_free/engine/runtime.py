"""Process set-up shared by the commands: logging to the console and ``log.txt``, the device."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from ..files import write_text_atomic

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(out_dir: str | Path | None = None, *, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_sampling_free_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        console._sampling_free_console = True
        root.addHandler(console)
    if out_dir is not None:  # one run's log.txt at a time (several runs in one process: compare, tests)
        for h in [h for h in root.handlers if getattr(h, "_sampling_free_file", False)]:
            root.removeHandler(h)
            h.close()
        handler = logging.FileHandler(Path(out_dir) / "log.txt")
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._sampling_free_file = True
        root.addHandler(handler)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"MODEL.DEVICE={name!r} but PyTorch sees no CUDA GPU on this machine; use MODEL.DEVICE cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"MODEL.DEVICE={name!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def ensure_writable(out_dir: str | Path) -> None:
    """Create the run folder and prove it takes files, before any time is spent."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"OUTPUT_DIR {out_dir} is not writable: {exc.strerror or exc}") from None


class MetricsWriter:
    """``metrics.jsonl`` (one JSON object per logged step) and, when the package is installed, TensorBoard scalars.

    On resume the records past the checkpoint's iteration (written by the interrupted run, whose work is being
    redone) are dropped, so the file reads as one uninterrupted run."""

    def __init__(self, out_dir: str | Path, start_iter: int, *, enabled: bool, tensorboard: bool):
        self.enabled, self.path = enabled, Path(out_dir) / "metrics.jsonl"
        self.window: dict[str, float] = {}
        self.count, self.data_time, self.start = 0, 0.0, time.perf_counter()
        self.file = self.tb = None
        if not enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("iteration", 0) <= start_iter]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logging.getLogger(__name__).info("tensorboard is not installed: logging to metrics.jsonl only")
            else:
                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start_iter + 1)

    def add_data_time(self, seconds: float) -> None:
        self.data_time += seconds

    def add(self, iteration: int, losses: dict, stats: dict, *, lr: float, last: bool, period: int,
            max_iter: int) -> dict | None:
        """Accumulate one step; every ``period`` steps (and at the last) write and return the averaged record."""
        for name, value in losses.items():
            self.window[name] = self.window.get(name, 0.0) + float(value.detach())
        self.window["loss"] = self.window.get("loss", 0.0) + sum(float(v.detach()) for v in losses.values())
        for name, value in stats.items():
            self.window[name] = self.window.get(name, 0.0) + value
        self.count += 1
        if not (iteration % period == 0 or last):
            return None
        elapsed = time.perf_counter() - self.start
        record = {"iteration": iteration, "lr": lr, **{k: v / self.count for k, v in self.window.items()},
                  "time": elapsed / self.count, "data_time": self.data_time / self.count,
                  "eta_seconds": round(elapsed / self.count * (max_iter - iteration), 1)}
        self.window, self.count, self.data_time, self.start = {}, 0, 0.0, time.perf_counter()
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            self.scalars(iteration, {k: v for k, v in record.items() if k != "iteration"}, prefix="train/")
        return record

    def scalars(self, iteration: int, values: dict, *, prefix: str = "") -> None:
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(prefix + name, value, iteration)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
