"""Process set-up shared by the commands: logging to the console and ``log.txt``, the device."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(out_dir: str | Path | None = None, *, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_sampling_free_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        console._sampling_free_console = True
        root.addHandler(console)
    if out_dir is not None:
        path = str(Path(out_dir) / "log.txt")
        if not any(getattr(h, "baseFilename", None) == str(Path(path).resolve()) for h in root.handlers):
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter(_FORMAT))
            root.addHandler(handler)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"MODEL.DEVICE={name!r} but PyTorch sees no CUDA GPU on this machine; use MODEL.DEVICE cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"MODEL.DEVICE={name!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    return device
