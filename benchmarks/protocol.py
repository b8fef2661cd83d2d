"""The evaluation protocol behind every table: choices made on validation data with the same budget for both sides,
then the test split once, five seeds, both variants at both test thresholds.

    python benchmarks/protocol.py tune retinanet_shapes     # each side's grid on the validation split, 2 seeds
    python benchmarks/protocol.py choose retinanet_shapes   # best setting per side -> results/choices/<bench>.json
    python benchmarks/protocol.py test retinanet_shapes     # both sides, chosen settings, seeds 0-4, test split
    python benchmarks/protocol.py curve retinanet_shapes    # seed 0's checkpoints (every 100 iterations) evaluated
    python benchmarks/protocol.py collect retinanet_shapes  # their AP against training time -> results/curves/
    python benchmarks/protocol.py explore faster_rcnn_shapes --set MODEL.RPN.CLASSIFICATION_SCALE 2.0
                                                            # research: a side's choice changed, on validation only

Every run is a ``sampling-free compare`` of one variant and one seed (so ``--jobs 2`` runs two at once, each on one
thread), writing its record under ``results/records/<bench>/``; ``tune`` and ``test`` skip runs whose record exists
(made by the same command), so an interrupted protocol resumes run by run, on this machine or another.
The baseline's grid is as large as sampling-free's: whatever one side may tune, the other may tune as much.

``explore`` is for designing a rule (issue "No knob to tune"), not for tuning a table: it trains a side's chosen
setting with ``--set`` overrides on the validation split with the tuning seeds, records under
``results/research/records/`` (never read by ``choose`` or the tables) and prints them beside the choice's own
validation APs. The test split is never touched.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sampling_free.records import read_records, record_path, slug_of  # noqa: E402

TUNE_SEEDS = (100, 101)  # never the test seeds: a setting's lucky seed must not carry into the test table
TEST_SEEDS = (0, 1, 2, 3, 4)
CURVE_PERIOD = 100


@dataclass(frozen=True)
class Benchmark:
    config: str
    tune_split: str
    test_split: str
    baseline_grid: tuple[dict, ...]  # ties go to the earlier setting
    free_grid: tuple[dict, ...]
    ohem_grid: tuple[dict, ...] = ()  # R-CNNs: OHEM, the strongest sampler, as a third side
    common: tuple[str, ...] = ()

    def grids(self, sides=None) -> dict[str, tuple[dict, ...]]:
        grids = {"baseline": self.baseline_grid, "sampling_free": self.free_grid, "ohem": self.ohem_grid}
        return {side: grid for side, grid in grids.items() if grid and (sides is None or side in sides)}


def focal_grid(family: str) -> tuple[dict, ...]:
    """Focal loss's γ around the paper's 2 (α 0.25, the paper's best for γ >= 1)."""
    return tuple({f"MODEL.{family}.FOCAL_LOSS_GAMMA": g} for g in (2.0, 1.0, 3.0))


SCALE_GRID = tuple({"MODEL.CLASSIFICATION_SCALE": s} for s in (1.0, 2.0, 4.0))
# R-CNN: both sides may clip the gradient (0: off) and size their training set of RoIs: the baseline its RoI
# sample, sampling-free the proposals it trains on (every one of them).
RCNN_BASELINE_GRID = tuple({"SOLVER.CLIP_GRAD_NORM": c, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": n}
                           for c in (0.0, 5.0) for n in (256, 512))
RCNN_FREE_GRID = tuple({"MODEL.SAMPLING_FREE.CLIP_GRAD_NORM": c, "MODEL.RPN.POST_NMS_TOP_N_TRAIN": n}
                       for c in (5.0, 0.0) for n in (500, 1000))
# OHEM: its batch of hardest RoIs per image (the paper's 64 per image at 2 images, and twice that) × the clip
OHEM_GRID = tuple({"SOLVER.CLIP_GRAD_NORM": c, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": n}
                  for c in (0.0, 5.0) for n in (64, 128))
def rcnn_grids(*, sample: tuple[int, int], proposals: tuple[int, int]) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """R-CNN grids of the same size: each side's clip × its training set of RoIs."""
    return (tuple({"SOLVER.CLIP_GRAD_NORM": c, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": n} for c in (0.0, 5.0)
                  for n in sample),
            tuple({"MODEL.SAMPLING_FREE.CLIP_GRAD_NORM": c, "MODEL.RPN.POST_NMS_TOP_N_TRAIN": n} for c in (5.0, 0.0)
                  for n in proposals))


# SSD's heuristic is hard-negative mining: its negatives-per-positive ratio against sampling-free's guided scale
MINING_GRID = tuple({"MODEL.SSD.NEG_POS_RATIO": r} for r in (3.0, 2.0, 5.0))
# Dense scenes: the sampling-free RPN's box-loss normaliser is its knob there (results.md), beside the clip
DENSE_FREE_GRID = tuple({"MODEL.SAMPLING_FREE.CLIP_GRAD_NORM": c, "MODEL.RPN.BOX_LOSS_NORMALIZER": n}
                        for c in (5.0, 0.0) for n in ("positives", "images"))
Q, D = "configs/quickstart", "configs/dense"
BENCHMARKS = {
    "retinanet_shapes": Benchmark(f"{Q}/retinanet_mobilenet_v2_shapes.yaml", "shapes_minival", "shapes_val",
                                  focal_grid("RETINANET"), SCALE_GRID),
    "fcos_shapes": Benchmark(f"{Q}/fcos_mobilenet_v2_shapes.yaml", "shapes_minival", "shapes_val",
                             focal_grid("FCOS"), SCALE_GRID),
    "faster_rcnn_shapes": Benchmark(f"{Q}/faster_rcnn_mobilenet_v2_shapes.yaml", "shapes_minival", "shapes_val",
                                    RCNN_BASELINE_GRID, RCNN_FREE_GRID, OHEM_GRID),
    "mask_rcnn_shapes": Benchmark(f"{Q}/mask_rcnn_mobilenet_v2_shapes.yaml", "shapes_minival", "shapes_val",
                                  RCNN_BASELINE_GRID, RCNN_FREE_GRID, OHEM_GRID),
    "paa_shapes": Benchmark(f"{Q}/paa_mobilenet_v2_shapes.yaml", "shapes_minival", "shapes_val",
                            focal_grid("FCOS"), SCALE_GRID),
    "cascade_rcnn_shapes": Benchmark(f"{Q}/cascade_rcnn_mobilenet_v2_shapes.yaml", "shapes_minival", "shapes_val",
                                     *rcnn_grids(sample=(128, 256), proposals=(300, 600)), OHEM_GRID),
    "atss_shapes": Benchmark(f"{Q}/atss_mobilenet_v2_shapes.yaml", "shapes_minival", "shapes_val",
                             focal_grid("FCOS"), SCALE_GRID),
    "ssdlite_shapes": Benchmark(f"{Q}/ssdlite_mobilenet_v2_shapes.yaml", "shapes_minival", "shapes_val",
                                MINING_GRID, SCALE_GRID),
    "retinanet_dense": Benchmark(f"{D}/retinanet_mobilenet_v2_dense.yaml", "shapes_dense_minival", "shapes_dense_val",
                                 focal_grid("RETINANET"), SCALE_GRID),
    "faster_rcnn_dense": Benchmark(f"{D}/faster_rcnn_mobilenet_v2_dense.yaml", "shapes_dense_minival",
                                   "shapes_dense_val", RCNN_BASELINE_GRID, DENSE_FREE_GRID),
}


def opts_of(values: dict, variant: str = "") -> list[str]:
    prefix = f"{variant}:" if variant else ""
    return [x for k, v in values.items() for x in (prefix + k, repr(v) if not isinstance(v, str) else v)]


def run_folder(bench: str, split: str, setting: dict, args) -> Path:
    return Path(args.output) / bench / split / (slug_of(setting) or "default")


def job(bench: str, b: Benchmark, split: str, variant: str, setting: dict, seed: int, args,
        extra=()) -> tuple[str, list[str]]:
    """(a name for its log, the command) of one variant and seed."""
    out = run_folder(bench, split, setting, args)
    name = f"{bench}_{split}_{out.name}_{variant}_seed{seed}"
    return name, [sys.executable, "-m", "sampling_free.cli", "compare", "--config-file", b.config, "--seeds", str(seed),
                  "--variants", variant, "--out", str(out), "--records", str(Path(args.results) / "records" / bench),
                  "DATASETS.TEST", repr([split]), *b.common, *extra, *opts_of(setting, variant)]


def recorded(bench: str, b: Benchmark, split: str, variant: str, setting: dict, seed: int, args, extra=()) -> bool:
    """Whether results/records already holds this run's record, made with the same command: a protocol resumed on
    another machine (whose run folders are gone) trains only what is missing. ``--rerun`` trains it anyway."""
    path = record_path(Path(args.results) / "records" / bench, split, variant, slug_of(setting), seed)
    if getattr(args, "rerun", False) or not path.exists():
        return False
    record = json.loads(path.read_text())
    return (record["config_file"], record["overrides"], record["variant_overrides"]) == (
        b.config, ["DATASETS.TEST", repr([split]), *b.common, *extra], opts_of(setting))


def curve_job(bench: str, b: Benchmark, variant: str, setting: dict, seed: int, args) -> tuple[str, list[str]]:
    """Evaluate every checkpoint of a test run (``test`` saves one each CURVE_PERIOD iterations)."""
    run = run_folder(bench, b.test_split, setting, args) / variant / f"seed{seed}"
    iters = sorted(p.stem.split("_")[1] for p in run.glob("model_0*.pth"))
    return f"curve_{bench}_{variant}_seed{seed}", [sys.executable, "-m", "sampling_free.cli", "eval", "--config-file",
                                                   str(run / "config.yaml"), "--iters", *iters]


def collect_curves(bench: str, b: Benchmark, results: Path, args) -> dict:
    """Seed 0's AP at each checkpoint against the training seconds spent to reach it (summed from metrics.jsonl),
    both sides; the two ran side by side, each on one thread, so their clocks ran under the same load."""
    choice = json.loads((results / "choices" / f"{bench}.json").read_text())
    curves = {}
    for variant in ("baseline", "sampling_free"):
        run = run_folder(bench, b.test_split, choice[variant]["chosen"], args) / variant / f"seed{TEST_SEEDS[0]}"
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        seconds, done, elapsed = {}, 0, 0.0
        for entry in log:
            elapsed += entry["time"] * (entry["iteration"] - done)
            done = entry["iteration"]
            seconds[done] = elapsed
        points = []
        for metrics in sorted(run.glob("inference/*/model_*/metrics.json")):
            name = metrics.parent.name
            if name != "model_final" and not name[len("model_"):].isdigit():
                continue  # the evaluation at the other side's threshold
            iteration = done if name == "model_final" else int(name[len("model_"):])
            points.append({"iteration": iteration, "seconds": round(seconds[iteration], 1),
                           "AP": json.loads(metrics.read_text())["bbox"]["AP"]})
        curves[variant] = {"seed": TEST_SEEDS[0], "points": sorted(points, key=lambda p: p["iteration"]),
                           "source": json.loads((run / "source.json").read_text())["starts"][0]}
    return curves


def run_jobs(commands: list[tuple[str, list[str]]], jobs: int, log_dir: Path) -> int:
    """Run the commands ``jobs`` at a time, each on one thread; returns the number that failed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running, failed = list(commands), [], 0
    while pending or running:
        while pending and len(running) < jobs:
            name, cmd = pending.pop(0)
            log = open(log_dir / f"{name}.log", "w")
            print(time.strftime("%H:%M:%S"), "start", name, flush=True)
            running.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), name, log))
        time.sleep(5)
        for proc, name, log in [r for r in running if r[0].poll() is not None]:
            running.remove((proc, name, log))
            log.close()
            failed += proc.returncode != 0
            print(time.strftime("%H:%M:%S"), "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})", name,
                  flush=True)
    return failed


def choose(bench: str, b: Benchmark, results: Path) -> dict:
    """Each side's setting with the best mean box AP over the tuning seeds on the validation split; a setting with a
    diverged or missing seed cannot be chosen. Ties go to the earlier setting of the grid. A side not tuned at all
    (OHEM, run after the other two) is left out until it is."""
    found = read_records(results / "records" / bench / b.tune_split)
    choice = {"benchmark": bench, "config": b.config, "split": b.tune_split, "seeds": list(TUNE_SEEDS)}
    for variant, grid in b.grids().items():
        if variant == "ohem" and not any(r["variant"] == variant for r in found):
            continue
        table = []
        for setting in grid:
            want = opts_of(setting)
            runs = {r["seed"]: r for r in found if r["variant"] == variant and r["variant_overrides"] == want}
            aps = [runs[s]["metrics"]["bbox"]["AP"] for s in TUNE_SEEDS if s in runs and "bbox" in runs[s]["metrics"]]
            complete = len(aps) == len(TUNE_SEEDS)
            table.append({"setting": setting, "AP": aps, "mean": statistics.fmean(aps) if complete else None,
                          "diverged": sorted(s for s, r in runs.items() if r.get("diverged"))})
        ranked = [row for row in table if row["mean"] is not None]
        if len(ranked) < len(table):
            raise SystemExit(f"{bench}: {variant} has unfinished or diverged settings on {b.tune_split}: "
                             f"{[row['setting'] for row in table if row['mean'] is None]} -- run tune first")
        best = max(ranked, key=lambda row: (row["mean"], -table.index(row)))
        choice[variant] = {"chosen": best["setting"], "grid": table}
    return choice


def explored(bench: str, b: Benchmark, choice: dict, side: str, setting: dict, research: Path) -> str:
    """One line: an explored setting's validation AP per tuning seed and mean, beside the side's choice's."""
    def aps(folder: Path, s: dict) -> dict[int, float]:
        found = {}
        for seed in TUNE_SEEDS:
            path = record_path(folder / bench, b.tune_split, side, slug_of(s), seed)
            if path.exists():
                found[seed] = json.loads(path.read_text())["metrics"]["bbox"]["AP"]
        return found

    mine, chosen = aps(research / "records", setting), aps(research.parent / "records", choice[side]["chosen"])

    def show(found):
        return ", ".join(f"{found[s]:.2f}" for s in sorted(found)) + (
            f" (mean {statistics.mean(found.values()):.2f})" if found else "—")
    own = slug_of(choice[side]["chosen"])
    return f"{bench} {side} {slug_of(setting)}: {show(mine)}; the choice {own}: {show(chosen)}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["tune", "choose", "test", "curve", "collect", "explore"])
    p.add_argument("benchmarks", nargs="+", choices=list(BENCHMARKS))
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    p.add_argument("--seeds", type=int, nargs="+", help="override the step's seeds")
    p.add_argument("--output", default="output/protocol", help="run folders")
    p.add_argument("--results", default=str(ROOT / "results"), help="records and choices (committed)")
    p.add_argument("--sides", nargs="+", choices=["baseline", "sampling_free", "ohem"],
                   help="tune / test only these sides (default: baseline and sampling_free)")
    p.add_argument("--rerun", action="store_true", help="tune / test: train runs that already have a record too")
    p.add_argument("--dry-run", action="store_true", help="print the runs this step would start, start none")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY VALUE",
                   help="explore: config overrides on top of the side's choice (pairs)")
    args = p.parse_args(argv)
    results = Path(args.results)
    if args.step == "explore" and (not args.set or len(args.set) % 2):
        p.error("explore needs --set KEY VALUE [KEY VALUE ...]")
    commands, reports = [], []
    for bench in args.benchmarks:
        b = BENCHMARKS[bench]
        if args.step == "tune":
            for seed in args.seeds or TUNE_SEEDS:
                for variant, grid in b.grids(args.sides or ("baseline", "sampling_free")).items():
                    commands += [job(bench, b, b.tune_split, variant, s, seed, args) for s in grid
                                 if not recorded(bench, b, b.tune_split, variant, s, seed, args)]
        elif args.step == "choose":
            choice = choose(bench, b, results)
            path = results / "choices" / f"{bench}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(choice, indent=2) + "\n")
            print(path, {v: choice[v]["chosen"] for v in b.grids() if v in choice})
        elif args.step == "explore":
            choice = json.loads((results / "choices" / f"{bench}.json").read_text())
            research = argparse.Namespace(**{**vars(args), "results": str(results / "research")})
            for side in args.sides or ("sampling_free",):
                setting = {**choice[side]["chosen"], **dict(zip(args.set[::2], args.set[1::2]))}
                reports.append((bench, b, choice, side, setting))
                commands += [job(bench, b, b.tune_split, side, setting, seed, research)
                             for seed in args.seeds or TUNE_SEEDS
                             if not recorded(bench, b, b.tune_split, side, setting, seed, research)]
        elif args.step == "collect":
            path = results / "curves" / f"{bench}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(collect_curves(bench, b, results, args), indent=1) + "\n")
            print(path)
        else:
            choice = json.loads((results / "choices" / f"{bench}.json").read_text())
            for seed in args.seeds or (TEST_SEEDS if args.step == "test" else TEST_SEEDS[:1]):
                for variant in [v for v in (args.sides or ("baseline", "sampling_free")) if v in choice]:
                    if args.step == "test":
                        extra = ("SOLVER.CHECKPOINT_PERIOD", str(CURVE_PERIOD))
                        if not recorded(bench, b, b.test_split, variant, choice[variant]["chosen"], seed, args, extra):
                            commands.append(job(bench, b, b.test_split, variant, choice[variant]["chosen"], seed, args,
                                                extra=extra))
                    else:
                        commands.append(curve_job(bench, b, variant, choice[variant]["chosen"], seed, args))
    if args.dry_run:
        print("\n".join(shlex.join(cmd) for _, cmd in commands))
        return 0
    failed = bool(commands) and run_jobs(commands, args.jobs, Path(args.output) / "logs")
    for report in reports:
        print(explored(*report, results / "research"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
