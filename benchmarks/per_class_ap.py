"""Per-class box AP over seeds, rarest class first.

Made for ``MODEL.SAMPLING_FREE.PER_CLASS_PRIOR``: with one shared π every class starts at the same bias and is
thresholded at the same score; a prior per class should matter most for the rare classes, so the table puts them
first, with the number of foreground training anchors per class that the prior was counted from.

    python benchmarks/per_class_ap.py "shared π=OUT/retina_default/sampling_free" "per-class π=OUT/retina_per_class/sampling_free"

Each directory holds ``seedN/`` run folders as ``sampling-free compare`` writes them. Cells: mean ± std over
seeds, then the per-seed values.
"""
import argparse
import json
import statistics
from pathlib import Path

from sampling_free.compare import final_metrics


def per_class_runs(variant_dir: Path) -> dict[int, dict[str, float]]:
    """{seed: {class: AP}} for every finished seed."""
    runs = {}
    for seed_dir in sorted(variant_dir.glob("seed*")):
        metrics = final_metrics(seed_dir)
        if metrics is not None:
            runs[int(seed_dir.name[4:])] = metrics["bbox_per_class"]
    if not runs:
        raise SystemExit(f"{variant_dir}: no seed*/inference/*/model_final/metrics.json (not a finished compare variant)")
    return runs


def anchor_counts(variant_dirs: list[Path]) -> dict[str, float]:
    """Foreground training anchors per class, from the first prior.json that records them (per-class prior runs)."""
    for d in variant_dirs:
        for prior in sorted(d.glob("seed*/prior.json")):
            counts = json.loads(prior.read_text()).get("foreground_per_class")
            if counts:
                return counts
    return {}


def cell(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {std:.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", metavar="LABEL=DIR")
    args = parser.parse_args()
    labelled = [v.split("=", 1) if "=" in v else (Path(v).name, v) for v in args.variants]
    runs = {label: per_class_runs(Path(d)) for label, d in labelled}
    counts = anchor_counts([Path(d) for _, d in labelled])
    first = next(iter(runs.values()))
    classes = sorted(first[min(first)], key=lambda c: counts.get(c, 0.0))
    header = ["class", "fg anchors (train)"] + [f"{label} ({len(r)} seeds)" for label, r in runs.items()]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for c in classes:
        row = [c, f"{counts[c]:.0f}" if c in counts else "—"]
        row += [cell([per_seed[s][c] for s in sorted(per_seed)]) for per_seed in runs.values()]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
