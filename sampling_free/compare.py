"""``sampling-free compare``: the experiment this project exists for, on any config.

Trains, with the same schedule and several seeds, the sampling heuristic (baseline), the heuristic removed with none
of the three components, each component alone on top of that, and full sampling-free; evaluates each and writes a
paper-style table (mean ± std over seeds) as Markdown and JSON, a bar chart and the training-loss curves. Every run
has its own folder under ``--out``, so an interrupted comparison resumes where it stopped (finished runs are read
back, unfinished ones resume from their last checkpoint).

What a reviewer needs beyond the means, and what this adds:

* **threshold parity** -- the baseline and sampling-free are each also evaluated at the other's test threshold
  (sampling-free's class-adaptive one, the baseline's fixed one), so a difference can be split into what training
  gives and what the threshold gives;
* **paired differences** -- each variant against the baseline, seed by seed, with a 95 % t-interval;
* **records** (``--records DIR``) -- one small JSON per run that tables are generated from (``records.py``);
* **one-sided settings** -- ``baseline:MODEL.RETINANET.FOCAL_LOSS_GAMMA 1.0`` applies to that variant alone, so
  each side can run with what was chosen for it on validation data.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path

from . import records
from .config import load_config
from .evaluation.coco import METRIC_NAMES
from .files import write_json_atomic, write_text_atomic

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
    # R-CNNs: the strongest RoI sampler to compare with, online hard example mining (the baseline otherwise)
    "ohem": ("heuristic with OHEM (R-CNNs)", {**_OFF, "MODEL.ROI_HEADS.SAMPLER": "ohem"}),
}
ABLATION = ["baseline", "no_heuristic", "bias_init", "guided_loss", "adaptive_threshold", "sampling_free"]  # default
# The test-time setting of each side: MODEL.SAMPLING_FREE.ADAPTIVE_THRESHOLD (sampling-free: π·C one-stage, 1e-4 and
# its NMS for R-CNN box heads; baseline: the family's SCORE_THRESH and NMS_THRESH).
THRESHOLDS = {"baseline": False, "sampling_free": True}
PARITY = ("baseline", "sampling_free", "ohem")  # the variants scored at both sides' thresholds


def final_metrics(run_dir: Path, weights_name: str = "model_final") -> dict | None:
    """A finished run's final metrics.json (its model_final evaluation), or None while it is unfinished."""
    found = sorted(Path(run_dir).glob(f"inference/*/{weights_name}/metrics.json"))
    return json.loads(found[0].read_text()) if found else None


def split_scoped_overrides(opts: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``KEY VALUE`` pairs for every variant, and those written ``variant:KEY VALUE`` for one variant only."""
    common, scoped = [], {}
    for key, value in zip(opts[::2], opts[1::2]):
        variant, sep, bare = key.partition(":")
        if not sep:
            common += [key, value]
        elif variant not in VARIANTS:
            raise ValueError(f"override {key!r}: {variant!r} is not a variant; choose from {list(VARIANTS)}")
        else:
            scoped.setdefault(variant, []).extend([bare, value])
    if len(opts) % 2:
        common.append(opts[-1])  # load_config names the key without a value
    return common, scoped


def own_threshold(cfg) -> str:
    """Which side's test threshold a run's config evaluates at."""
    adaptive = cfg.MODEL.SAMPLING_FREE.ADAPTIVE_THRESHOLD
    return "sampling_free" if (cfg.MODEL.SAMPLING_FREE_ON if adaptive is None else adaptive) else "baseline"


def metrics_at_threshold(run_dir: Path, side: str) -> dict:
    """``model_final`` of a finished run evaluated at ``side``'s test threshold (read back once written)."""
    from .engine.evaluator import evaluate_checkpoint_model, model_from_checkpoint
    from .engine.runtime import resolve_device

    cfg = load_config(run_dir / "config.yaml", values={"MODEL.SAMPLING_FREE.ADAPTIVE_THRESHOLD": THRESHOLDS[side]})
    if own_threshold(load_config(run_dir / "config.yaml")) == side:
        return final_metrics(run_dir)
    name = f"model_final_at_{side}_threshold"
    done = final_metrics(run_dir, name)
    if done is not None:
        return done
    device = resolve_device(cfg.MODEL.DEVICE)
    model = model_from_checkpoint(cfg, run_dir / "model_final.pth", device)
    results = evaluate_checkpoint_model(cfg, model, run_dir, weights_name=name, device=device,
                                        class_names=list(cfg.DATASETS.CLASS_NAMES))
    return next(iter(results.values()))


def run_one(config_file, opts, values: dict, run_dir: Path) -> dict:
    """Metrics of one (variant, seed); trains unless a finished result is already there."""
    from .engine.trainer import run_training

    done = final_metrics(run_dir)
    if done is not None:
        logger.info("compare: %s already done", run_dir)
        return done
    cfg = load_config(config_file, opts, values={**values, "OUTPUT_DIR": str(run_dir)})
    try:
        run_training(cfg, config_file=str(config_file))
    except FloatingPointError as exc:  # a variant expected to train badly may blow up: that is a result
        logger.warning("compare: %s diverged: %s", run_dir, exc)
        write_text_atomic(run_dir / "diverged.txt", str(exc))
        return {"diverged": str(exc)}
    return final_metrics(run_dir)


def _scores(metrics: dict) -> dict:
    """The COCO metrics of a metrics.json, without per-class tables, plus detections per image."""
    out = {task: {k: metrics[task][k] for k in METRIC_NAMES} for task in ("bbox", "segm") if task in metrics}
    info = metrics.get("inference", {})
    if info.get("images"):
        out["detections_per_image"] = round(info["detections"] / info["images"], 2)
    return out


def make_record(*, config_file, common: list[str], scoped: list[str], variant: str, seed: int, run_dir: Path,
                metrics: dict, by_threshold: dict) -> dict:
    """One run's record (see ``records.py``): what ran, at which commit, and what it measured."""
    cfg = load_config(run_dir / "config.yaml")
    source = records.read_source(run_dir)
    log = run_dir / "metrics.jsonl"
    seconds = [json.loads(line).get("time") for line in log.read_text().splitlines()] if log.exists() else []
    seconds = [s for s in seconds if s]
    record = {"family": records.family_of(cfg), "variant": variant, "seed": seed, "split": cfg.DATASETS.TEST[0],
              "commit": source["commit"], "dirty": source["dirty"], "machine": source["machine"],
              "config_file": str(config_file), "overrides": common, "variant_overrides": scoped,
              "config_hash": records.config_hash(cfg), "iterations": cfg.SOLVER.MAX_ITER,
              "seconds_per_iter": round(statistics.median(seconds), 4) if seconds else None}
    return {**record, "command": records.command_of(record), "metrics": _scores(metrics),
            "metrics_at_threshold": {side: _scores(m) for side, m in by_threshold.items()},
            "recorded": time.strftime("%Y-%m-%d")}


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


def paired_against_baseline(results: dict[str, dict[int, dict]], thresholds: dict[str, dict[int, dict]],
                            task: str = "bbox") -> dict:
    """AP of each variant minus the baseline's, seed by seed: at each run's own threshold, and (sampling-free) with
    both at the baseline's and both at sampling-free's threshold."""
    def ap(per_seed):
        return {s: m[task]["AP"] for s, m in per_seed.items() if task in m}

    base = results.get("baseline", {})
    out = {v: {"own": records.paired_difference(ap(r), ap(base))} for v, r in results.items() if v != "baseline"}
    if "sampling_free" in out and "baseline" in thresholds:
        for side in THRESHOLDS:
            out["sampling_free"][side] = records.paired_difference(
                ap({s: m[side] for s, m in thresholds["sampling_free"].items()}),
                ap({s: m[side] for s, m in thresholds["baseline"].items()}))
    return out


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


def paired_table(paired: dict, labels: dict[str, str]) -> str:
    """Δ AP against the baseline with its 95 % interval and verdict, per seed."""
    rows = ["| variant − baseline (box AP) | at own thresholds | both at the baseline's | both at sampling-free's "
            "| per seed (own) | verdict (own) |", "|---|---|---|---|---|---|"]
    for variant, d in paired.items():
        at = [records.format_difference(d[side]) if side in d else "—" for side in ("own", *THRESHOLDS)]
        per_seed = ", ".join(f"{x:+.1f}" for x in d["own"]["per_seed"])
        rows.append(f"| {labels.get(variant, variant)} | {' | '.join(at)} | {per_seed} | {d['own']['verdict']} |")
    return "\n".join(rows)


def compare(config_file, opts, *, seeds, variants, out_dir: str | Path, records_dir: str | Path | None = None) -> dict:
    from .plot import bar_chart, plot_runs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    common, scoped = split_scoped_overrides(list(opts))
    results = {v: {} for v in variants}
    thresholds = {v: {} for v in variants if v in PARITY}
    for seed in seeds:  # seed-major: an early stop still leaves every variant with some seeds
        for variant in variants:
            run_dir = out_dir / variant / f"seed{seed}"
            own = scoped.get(variant, [])
            metrics = results[variant][seed] = run_one(config_file, common + own,
                                                       {**VARIANTS[variant][1], "SEED": seed}, run_dir)
            if "diverged" in metrics:
                continue
            by_threshold = {}
            if variant in thresholds:
                by_threshold = thresholds[variant][seed] = {side: metrics_at_threshold(run_dir, side)
                                                            for side in THRESHOLDS}
            if records_dir is not None:
                record = make_record(config_file=config_file, common=common, scoped=own, variant=variant, seed=seed,
                                     run_dir=run_dir, metrics=metrics, by_threshold=by_threshold)
                slug = records.slug_of(dict(zip(own[::2], own[1::2])))
                write_json_atomic(records.record_path(records_dir, record["split"], variant, slug, seed), record)
    summary = summarise(results)
    paired = paired_against_baseline(results, thresholds) if "baseline" in results else {}
    labels = {v: VARIANTS[v][0] for v in variants}
    table = markdown_table(summary, labels)
    if paired:
        table += "\n\n" + paired_table(paired, labels)
    write_text_atomic(out_dir / "comparison.md", f"Config: `{config_file}` {' '.join(opts)}\n\n{table}\n")
    write_json_atomic(out_dir / "comparison.json", {"config": str(config_file), "overrides": list(opts),
                                                    "seeds": list(seeds), "summary": summary, "paired": paired})
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
