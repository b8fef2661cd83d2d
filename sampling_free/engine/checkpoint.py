"""Checkpoints that are never half-written and load without executing pickled code."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..files import atomic_write, load_weights_file, write_text_atomic

logger = logging.getLogger(__name__)
LAST = "last_checkpoint"


def save_checkpoint(out_dir: str | Path, name: str, state: dict, *, tag_last: bool = True) -> Path:
    out_dir = Path(out_dir)
    path = out_dir / name
    atomic_write(path, lambda f: torch.save(state, f))
    if tag_last:
        write_text_atomic(out_dir / LAST, name)
    logger.info("saved %s", path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    state = load_weights_file(path)
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


def find_resumable(out_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: the one ``last_checkpoint`` names, verified by loading it; if it is missing
    or damaged (a disk error, a file copied in half), the newest checkpoint that loads, with a warning."""
    out_dir = Path(out_dir)
    candidates = []
    try:
        tagged = last_checkpoint(out_dir)
        if tagged is not None:
            candidates.append(tagged)
    except FileNotFoundError as exc:
        logger.warning("%s", exc)
    by_iteration = sorted(out_dir.glob("model_[0-9]*.pth"), reverse=True)
    candidates += [p for p in [out_dir / "model_final.pth", *by_iteration] if p.is_file() and p not in candidates]
    if not candidates:
        return None
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except ValueError as exc:
            logger.warning("cannot resume from %s: %s", path, exc)
            continue
        if "optimizer" in state and "iteration" in state:
            return path
    raise ValueError(f"{out_dir}: no checkpoint there can be resumed from (all damaged); move them away to start "
                     "afresh")
