"""Files written whole or not at all, and weight files read without executing pickled code."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def atomic_write(path: str | Path, write) -> Path:
    """``write(f)`` into a temporary file in the same folder, fsync, then rename: the final name only ever holds a
    whole file, whatever moment the process dies at."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: str | Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2))


def load_weights_file(path: str | Path):
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never a pickle's code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, or a pickle that wants to run code
        raise ValueError(f"{path}: not a loadable weights file ({type(exc).__name__}: {exc})") from None
