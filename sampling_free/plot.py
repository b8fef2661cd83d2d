"""Plots from run folders: training-loss curves (several runs overlaid) and AP over evaluated checkpoints.

``sampling-free plot OUTPUT_DIR [OUTPUT_DIR ...] --out curves.png``
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log in this run folder")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def checkpoint_ap(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Per test dataset, (iteration, box AP) of every evaluated checkpoint."""
    out: dict[str, list[tuple[int, float]]] = {}
    max_iter = max((r["iteration"] for r in read_metrics(run_dir)), default=0)
    for metrics in Path(run_dir).glob("inference/*/*/metrics.json"):
        name = metrics.parent.name
        match = re.fullmatch(r"model_(\d+)", name)
        iteration = int(match.group(1)) if match else (max_iter if name == "model_final" else None)
        if iteration is not None:
            out.setdefault(metrics.parent.parent.name, []).append(
                (iteration, json.loads(metrics.read_text())["bbox"]["AP"]))
    return {k: sorted(v) for k, v in out.items()}


def plot_runs(run_dirs, out: str | Path, *, labels=None, keys=("loss",)) -> Path:
    """Loss curves of several runs on one figure (plus AP over checkpoints when any run evaluated several)."""
    labels = labels or [Path(d).name for d in run_dirs]
    aps = {label: checkpoint_ap(d) for label, d in zip(labels, run_dirs)}
    with_ap = any(len(points) > 1 for per_run in aps.values() for points in per_run.values())
    fig, axes = plt.subplots(1, 2 if with_ap else 1, figsize=(12 if with_ap else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    for label, run_dir in zip(labels, run_dirs):
        records = read_metrics(run_dir)
        for key in keys:
            points = [(r["iteration"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), label=f"{label} {key}" if len(keys) > 1 else label)
    ax.set_xlabel("iteration")
    ax.set_ylabel(" / ".join(keys))
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("training loss")
    if with_ap:
        ax = axes[0][1]
        for label, per_dataset in aps.items():
            for dataset, points in per_dataset.items():
                ax.plot(*zip(*points), marker="o", label=f"{label} ({dataset})")
        ax.set_xlabel("iteration")
        ax.set_ylabel("box AP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("AP over checkpoints")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def bar_chart(summary: dict, out: str | Path, *, metric: str = "AP", title: str = "") -> Path:
    """Mean +- std of ``metric`` per variant (``summary`` as written by ``sampling_free.compare``)."""
    names = list(summary)
    means = [summary[n]["bbox"][metric]["mean"] for n in names]
    stds = [summary[n]["bbox"][metric]["std"] for n in names]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4.5))
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="#4C72B0")
    for k, m in enumerate(means):
        ax.text(k, m, f"{m:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=9)
    ax.set_ylabel(f"box {metric} (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
