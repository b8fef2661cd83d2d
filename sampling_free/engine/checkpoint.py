"""Checkpoints that are never half-written and load without executing pickled code."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
LAST = "last_checkpoint"


def _atomic_write(path: Path, write) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: the final name only ever holds a whole
    file, whatever moment the process dies at."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(out_dir: str | Path, name: str, state: dict, *, tag_last: bool = True) -> Path:
    out_dir = Path(out_dir)
    path = out_dir / name
    _atomic_write(path, lambda f: torch.save(state, f))
    if tag_last:
        _atomic_write(out_dir / LAST, lambda f: f.write(name.encode()))
    logger.info("saved %s", path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, or a pickle that wants to run code
        raise ValueError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a sampling-free checkpoint (no 'model' entry)")
    return state


def last_checkpoint(out_dir: str | Path) -> Path | None:
    tag = Path(out_dir) / LAST
    if not tag.is_file():
        return None
    path = Path(out_dir) / tag.read_text().strip()
    if not path.is_file():
        raise FileNotFoundError(f"{tag} names {path.name}, which does not exist")
    return path
