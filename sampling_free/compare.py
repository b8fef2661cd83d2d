"""``sampling-free compare``: the experiment this project exists for, on any config.

Trains, with the same schedule and several seeds, the sampling heuristic (baseline), the heuristic removed with none
of the three components, each component alone on top of that, and full sampling-free; evaluates each and writes a
paper-style table (mean ± std over seeds) as Markdown and JSON, a bar chart and the training-loss curves. Every run
has its own folder under ``--out``, so an interrupted comparison resumes where it stopped (finished runs are read
back, unfinished ones resume from their last checkpoint).
"""
from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

from .config import load_config
from .evaluation.coco import METRIC_NAMES

logger = logging.getLogger("sampling_free")

_OFF = {"MODEL.SAMPLING_FREE_ON": False}
VARIANTS = {
    "baseline": ("sampling heuristic (baseline)", _OFF),
    "no_heuristic": ("heuristic removed, nothing else", {**_OFF, "MODEL.SAMPLING_FREE.NO_HEURISTIC": True}),
    "bias_init": ("removed + bias init", {**_OFF, "MODEL.SAMPLING_FREE.NO_HEURISTIC": True,
                                          "MODEL.SAMPLING_FREE.BIAS_INIT": True}),
    "guided_loss": ("removed + guided loss", {**_OFF, "MODEL.SAMPLING_FREE.NO_HEURISTIC": True,
                                              "MODEL.SAMPLING_FREE.GUIDED_LOSS": True}),
    "adaptive_threshold": ("removed + adaptive threshold", {**_OFF, "MODEL.SAMPLING_FREE.NO_HEURISTIC": True,
                                                            "MODEL.SAMPLING_FREE.ADAPTIVE_THRESHOLD": True}),
    "sampling_free": ("sampling-free (all three)", {"MODEL.SAMPLING_FREE_ON": True}),
}


def final_metrics(run_dir: Path) -> dict | None:
    """A finished run's final metrics.json (its model_final evaluation), or None while it is unfinished."""
    found = sorted(run_dir.glob("inference/*/model_final/metrics.json"))
    return json.loads(found[0].read_text()) if found else None


def run_one(config_file, opts, values: dict, run_dir: Path) -> dict:
    """Metrics of one (variant, seed); trains unless a finished result is already there."""
    from .engine.trainer import train

    done = final_metrics(run_dir)
    if done is not None:
        logger.info("compare: %s already done", run_dir)
        return done
    cfg = load_config(config_file, opts, values={**values, "OUTPUT_DIR": str(run_dir)})
    try:
        train(cfg, config_file=str(config_file))
    except FloatingPointError as exc:  # a variant expected to train badly may blow up: that is a result
        logger.warning("compare: %s diverged: %s", run_dir, exc)
        (run_dir / "diverged.txt").write_text(str(exc))
        return {"diverged": str(exc)}
    return final_metrics(run_dir)


def summarise(results: dict[str, dict[int, dict]]) -> dict:
    """Per variant and task: mean, std (over seeds; 0 for one seed) and the per-seed values."""
    summary = {}
    for variant, per_seed in results.items():
        entry = {"seeds": sorted(per_seed), "diverged": sorted(s for s, m in per_seed.items() if "diverged" in m)}
        for task in ("bbox", "segm"):
            runs = [m[task] for m in per_seed.values() if task in m]
            if not runs:
                continue
            entry[task] = {}
            for k in METRIC_NAMES:
                values = [r[k] for r in runs]
                if any(math.isnan(v) for v in values):  # COCO's nan: the test set has no object of that size
                    entry[task][k] = {"mean": math.nan, "std": math.nan, "values": values}
                    continue
                entry[task][k] = {"mean": statistics.fmean(values),
                                  "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
        summary[variant] = entry
    return summary


def markdown_table(summary: dict, labels: dict[str, str]) -> str:
    tasks = [t for t in ("bbox", "segm") if any(t in s for s in summary.values())]
    header = ["variant"] + [f"{'mask ' if t == 'segm' else ''}{k}" for t in tasks for k in METRIC_NAMES] + ["seeds"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, s in summary.items():
        cells = [labels.get(variant, variant)]
        for t in tasks:
            for k in METRIC_NAMES:
                cells.append(f"{s[t][k]['mean']:.1f} ± {s[t][k]['std']:.1f}"
                             if t in s and not math.isnan(s[t][k]["mean"]) else "—")
        seeds = f"{len(s['seeds'])}" + (f" ({len(s['diverged'])} diverged)" if s["diverged"] else "")
        rows.append("| " + " | ".join(cells + [seeds]) + " |")
    return "\n".join(rows)


def compare(config_file, opts, *, seeds, variants, out_dir: str | Path) -> dict:
    from .plot import bar_chart, plot_runs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    results = {v: {} for v in variants}
    for seed in seeds:  # seed-major: an early stop still leaves every variant with some seeds
        for variant in variants:
            results[variant][seed] = run_one(config_file, opts, {**VARIANTS[variant][1], "SEED": seed},
                                             out_dir / variant / f"seed{seed}")
    summary = summarise(results)
    labels = {v: VARIANTS[v][0] for v in variants}
    table = markdown_table(summary, labels)
    (out_dir / "comparison.md").write_text(f"Config: `{config_file}` {' '.join(opts)}\n\n{table}\n")
    (out_dir / "comparison.json").write_text(json.dumps({"config": str(config_file), "overrides": list(opts),
                                                         "seeds": list(seeds), "summary": summary}, indent=2))
    finished = {labels[v]: summary[v] for v in variants if "bbox" in summary[v]}
    if finished:
        bar_chart(finished, out_dir / "comparison_ap.png", title=Path(config_file).stem)
    curves = [(labels[v], out_dir / v / f"seed{seeds[0]}") for v in variants]
    curves = [(label, d) for label, d in curves if (d / "metrics.jsonl").exists()]
    if curves:
        plot_runs([d for _, d in curves], out_dir / "comparison_loss.png", labels=[label for label, _ in curves])
    logger.info("comparison (%s):\n%s", out_dir, table)
    print(table)
    return summary
