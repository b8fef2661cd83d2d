"""A trained detector exported for inference (TorchScript or ONNX), checked against the eager model's detections.

``torch.jit.script`` is tried first: a scripted model takes images of any size. Our detectors do not script today
(``DetectionTransform.resize`` uses ``try``, the R-CNN adapters ``{**dict}``), so the fallback is a *trace* of
``ExportWrapper``: one RGB image in [0, 1] of a fixed size H x W in, boxes / scores / labels (and mask
probabilities) out, normalisation and the model's own resize inside the graph. A trace freezes every Python value
it met at that size, so the exported graph is only valid for H x W inputs: resize images to it first
(``resize_for_export``) and scale the boxes back. ONNX export (opset 17, the TorchScript-based exporter) uses the
same wrapper.

Tracing can also freeze values that depend on the image's content. The check compares the exported model with the
eager one on sample images that were *not* traced (boxes, scores, labels, masks), and is what says whether an
export can be trusted; see ``docs/demo_and_export.md`` for what exports per detector.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import re
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms.functional import resize

from .files import atomic_path, write_text_atomic

logger = logging.getLogger("sampling_free")

FORMATS = ("torchscript", "onnx")
OPSET = 17
BOX_TOL = 0.05  # pixels of the H x W input: far below what a drawn box or AP can tell apart
SCORE_TOL = 1e-4
MASK_TOL = 1e-3  # mask probability, before the 0.5 threshold
MATCH_PX = 2.0  # a same-class detection farther than this is another detection, not the same one moved
# Unmatched detections under this score are reported but tolerated: two runtimes may order near-equal floats
# differently (an RPN proposal whose IoU with a stronger one is 0.7 +- 1e-7 survives NMS in one only), and that
# changes which *weak* detections come out. 0.05 is the classic test threshold: nobody looks at what is below.
WEAK_SCORE = 0.05


class ExportWrapper(nn.Module):
    """(1, 3, H, W) RGB in [0, 1] -> boxes (N, 4) in the input's pixels, scores (N,), labels (N,) in 1..C, and
    for mask models masks (N, 1, H, W) probabilities: the model's own eval forward, as tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.output_names = ["boxes", "scores", "labels"] + (["masks"] if model.has_masks else [])

    def forward(self, image: torch.Tensor):
        detections = self.model([image[0]])[0]
        return tuple(detections[k] for k in self.output_names)


def resize_for_export(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A CHW image in [0, 1] as the exported graph takes it: (1, 3, H, W), resized (aspect not kept)."""
    return resize(image, list(size), antialias=True).clamp(0, 1)[None]


def sidecar(path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: how the file was made, its input size, outputs and class names."""
    return Path(str(path) + ".json")


def export(model: nn.Module, *, fmt: str, out: str | Path, example: torch.Tensor, class_names: list[str]) -> dict:
    """Write ``model`` to ``out`` in ``fmt``, traced on ``example`` (1, 3, H, W); returns the sidecar's contents."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise ModuleNotFoundError("ONNX export needs the onnx package: pip install 'sampling-free[export]' "
                                  "(onnx and onnxruntime, to check the export)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(model.exportable())
    info = {"format": fmt, "method": "trace", "image_size": list(example.shape[-2:]),
            "outputs": wrapper.output_names, "class_names": list(class_names), "detector": type(model).__name__}
    if model.export_caveat:
        info["caveat"] = model.export_caveat
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if fmt == "torchscript":
            try:
                scripted = torch.jit.script(wrapper.model)
                info["method"], info["image_size"] = "script", None
                with atomic_path(out) as tmp:
                    torch.jit.save(scripted, str(tmp))
            except Exception as exc:  # noqa: BLE001 - any scripting failure means "trace instead"
                info["script_failure"] = _first_error(exc)
                logger.info("torch.jit.script failed (%s); tracing a fixed-size wrapper", info["script_failure"])
                with atomic_path(out) as tmp:
                    torch.jit.save(torch.jit.trace(wrapper, (example,), check_trace=False), str(tmp))
        else:
            info["opset"] = OPSET
            with atomic_path(out) as tmp:
                torch.onnx.export(wrapper, (example,), str(tmp), opset_version=OPSET, dynamo=False,
                                  input_names=["image"], output_names=wrapper.output_names)
    frozen = sum(issubclass(w.category, torch.jit.TracerWarning) for w in caught)
    logger.info("wrote %s (%s, %s); the trace froze %d Python values", out, fmt, info["method"], frozen)
    write_text_atomic(sidecar(out), json.dumps(info, indent=1))
    return info


def _first_error(exc: Exception) -> str:
    """TorchScript's complaint and where it is: ``try blocks aren't supported (common.py:37)``."""
    text = str(exc).strip()
    where = re.search(r'File "([^"]+)", line (\d+)', text)
    first = text.splitlines()[0].rstrip(":") if text else type(exc).__name__
    return f"{first} ({Path(where.group(1)).name}:{where.group(2)})" if where else first


class Exported:
    """An exported file loaded for inference: ``exported(image)`` with ``image`` (1, 3, H, W) -> dict of tensors."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not sidecar(path).is_file():
            raise FileNotFoundError(f"{sidecar(path)}: not found (written next to every export; re-export {path})")
        self.info = json.loads(sidecar(path).read_text())
        self.outputs = self.info["outputs"]
        if self.info["format"] == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, not yet gone
                self.module = torch.jit.load(str(path), map_location="cpu")
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # the mask-pasting loop's shape notes are not problems
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, image: torch.Tensor) -> dict:
        size = self.info["image_size"]
        if size is not None and list(image.shape[-2:]) != size:
            raise ValueError(f"the export takes {size[0]}x{size[1]} images, got {image.shape[-2]}x{image.shape[-1]}"
                             " (resize with sampling_free.export.resize_for_export)")
        if self.info["format"] == "onnx":
            values = self.session.run(None, {"image": image.numpy()})
            return {k: torch.from_numpy(v) for k, v in zip(self.outputs, values)}
        # without the profiling executor: its warm-up re-optimises the graph for seconds per input; same graph
        with torch.no_grad(), torch.jit.optimized_execution(False):
            if self.info["method"] == "script":
                return dict(self.module([image[0]])[1][0])
            return dict(zip(self.outputs, self.module(image)))


def compare(eager: dict, exported: dict) -> dict:
    """Match each eager detection to the exported detection of the same class with the nearest box, then measure
    the largest box, score and mask differences. A detection without a partner is *borderline* when it scores
    within ``SCORE_TOL`` of the other side's weakest kept one (a tiny numeric difference decided whether it made
    the cut), *weak* when it scores under ``WEAK_SCORE``, else *missing*. ``ok``: none missing, every difference
    within tolerance."""
    a_boxes, b_boxes = eager["boxes"].float(), exported["boxes"].float()
    a_labels, b_labels = eager["labels"].long(), exported["labels"].long()
    dist = (a_boxes[:, None] - b_boxes[None]).abs().amax(-1) if len(a_boxes) and len(b_boxes) else \
        torch.zeros(len(a_boxes), len(b_boxes))
    dist[a_labels[:, None] != b_labels[None]] = float("inf")
    pairs, used = [], set()
    for i in torch.argsort(eager["scores"], descending=True, stable=True).tolist():
        if len(b_boxes) == 0:
            break
        row = dist[i].clone()
        row[list(used)] = float("inf")
        j = int(row.argmin())
        if row[j] <= MATCH_PX:
            pairs.append((i, j))
            used.add(j)
    ia = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    ib = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    report = {"eager": len(a_boxes), "exported": len(b_boxes), "matched": len(pairs),
              "max_box_diff": float(dist[ia, ib].max()) if pairs else 0.0,
              "max_score_diff": float((eager["scores"][ia] - exported["scores"][ib]).abs().max()) if pairs else 0.0}
    if "masks" in eager and "masks" in exported:
        report["max_mask_diff"] = float((eager["masks"][ia].float() - exported["masks"][ib].float()).abs().max()) \
            if pairs else 0.0

    def kind(score: float, other_scores: torch.Tensor) -> str:
        if len(other_scores) and abs(score - float(other_scores.min())) <= SCORE_TOL:
            return "borderline"
        return "weak" if score < WEAK_SCORE else "missing"

    matched_a = {p[0] for p in pairs}
    kinds = [kind(float(eager["scores"][k]), exported["scores"]) for k in range(len(a_boxes)) if k not in matched_a] + \
        [kind(float(exported["scores"][k]), eager["scores"]) for k in range(len(b_boxes)) if k not in used]
    report.update({k: kinds.count(k) for k in ("borderline", "weak", "missing")})
    report["ok"] = (report["missing"] == 0 and report["max_box_diff"] <= BOX_TOL
                    and report["max_score_diff"] <= SCORE_TOL and report.get("max_mask_diff", 0.0) <= MASK_TOL)
    return report


def check(model: nn.Module, exported: Exported, images: list[torch.Tensor]) -> list[dict]:
    """``compare`` on every image (each (1, 3, H, W)): the eager model and the export on the same input. An export
    that fails to run on an image is reported as such (``error``), not raised."""
    model = model.eval()
    reports = []
    for image in images:
        with torch.no_grad():
            eager = {k: v.cpu() for k, v in model([image[0].to(next(model.parameters()).device)])[0].items()}
        try:
            reports.append(compare(eager, exported(image)))
        except Exception as exc:  # noqa: BLE001 - a frozen shape that no longer fits, typically
            reports.append({"eager": len(eager["boxes"]), "ok": False,
                            "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"})
    return reports


def describe(name: str, report: dict) -> str:
    """One line of agreement for an image."""
    if "error" in report:
        return f"{name}: the export failed to run ({report['error']})"
    text = (f"{name}: eager {report['eager']}, exported {report['exported']}, matched {report['matched']}")
    unmatched = [f"{report[k]} {k}" for k in ("borderline", "weak", "missing") if report[k]]
    text += f" (unmatched, either side: {', '.join(unmatched)})" if unmatched else ""
    text += f", max |Δbox| {report['max_box_diff']:.2g} px, max |Δscore| {report['max_score_diff']:.2g}"
    if "max_mask_diff" in report:
        text += f", max |Δmask| {report['max_mask_diff']:.2g}"
    return text + ("" if report["ok"] else "  <-- DISAGREES")


def sample_images(count: int = 3) -> list[torch.Tensor]:
    """Images of the built-in ``shapes`` dataset, for checking an export when no images are given."""
    from .data.shapes import render_image
    from .api import load_image

    return [load_image(render_image(0, "export-check", k)[0]) for k in range(count)]


def export_and_check(model: nn.Module, *, fmt: str, out: str | Path, image_size: tuple[int, int],
                     images: list[torch.Tensor], class_names: list[str]) -> tuple[dict, list[dict] | None]:
    """Export traced on the first image (each resized to ``image_size``), then check on all of them; the
    agreement is added to the sidecar. Reports are ``None`` when ONNX cannot be checked (no onnxruntime)."""
    resized = [resize_for_export(im, image_size) for im in images]
    info = export(model, fmt=fmt, out=out, example=resized[0], class_names=class_names)
    if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        return info, None
    reports = check(model, Exported(out), resized)
    info["agreement"] = {"images": len(reports), "ok": sum(r["ok"] for r in reports),
                         "tolerance": {"box_px": BOX_TOL, "score": SCORE_TOL, "mask": MASK_TOL}, "per_image": reports}
    write_text_atomic(sidecar(out), json.dumps(info, indent=1))
    return info, reports
