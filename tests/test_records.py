"""Records and their statistics: the t-interval against printed tables, the paired difference by hand, when a record
stops describing the code, and that the README's and results.md's generated tables are what the records give."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sampling_free import records

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("df, want", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)])
def test_t_quantile_matches_the_printed_table(df, want):
    """Two-sided 95 % critical values of Student's t (any statistics textbook's table, 3 decimals)."""
    assert records.t_quantile(0.975, df) == pytest.approx(want, abs=6e-4)


def test_t_quantile_of_one_degree_is_the_cauchy_quantile():
    """t with df = 1 is the Cauchy distribution, whose quantile is tan(π (p − 1/2)) in closed form."""
    for p in (0.6, 0.9, 0.99):
        assert records.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-6)


def test_paired_difference_by_hand():
    treated = {0: 54.0, 1: 55.0, 2: 53.0, 3: 56.0, 4: 55.0, 7: 99.0}  # seed 7 has no pair: left out
    control = {0: 52.0, 1: 54.0, 2: 53.5, 3: 53.0, 4: 53.0}
    d = records.paired_difference(treated, control)
    # differences 2, 1, -0.5, 3, 2: mean 1.5, sd sqrt(7 / 4) = 1.3229, half-width 2.7764 * 1.3229 / sqrt(5) = 1.6426
    assert d["seeds"] == [0, 1, 2, 3, 4] and d["per_seed"] == [2.0, 1.0, -0.5, 3.0, 2.0]
    assert d["mean"] == pytest.approx(1.5) and d["sd"] == pytest.approx(1.32288, rel=1e-5)
    assert (d["low"], d["high"]) == (pytest.approx(-0.1426, abs=1e-3), pytest.approx(3.1426, abs=1e-3))
    assert d["verdict"] == "level" and records.format_difference(d) == "+1.5 [-0.1, +3.1]"
    shifted = records.paired_difference({s: v + 1 for s, v in treated.items()}, control)
    assert shifted["verdict"] == "ahead" and shifted["low"] > 0
    behind = records.paired_difference(control, {s: v + 1 for s, v in treated.items()})
    assert behind["verdict"] == "behind" and behind["high"] < 0
    assert records.paired_difference({0: 1.0}, {0: 0.5})["verdict"] == "one seed"
    near = {"mean": -0.7, "low": -1.5, "high": -0.04}
    assert records.format_difference(near) == "-0.7 [-1.5, -0.04]"  # never a bare "-0.0" bound


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


needs_history = pytest.mark.skipif(_git("rev-parse", "--is-shallow-repository") != "false",
                                   reason="needs the repository's full git history")


@needs_history
def test_a_record_goes_stale_when_its_family_code_changes_and_a_witness_carries_it():
    head = _git("rev-parse", "HEAD")
    root = _git("rev-list", "--max-parents=0", "HEAD").splitlines()[0]
    metrics = {"bbox": {"AP": 50.0}}

    def record(commit, seed=0, ap=50.0, config_hash="abc"):
        return {"family": "retinanet", "commit": commit, "dirty": False, "config_hash": config_hash, "seed": seed,
                "split": "shapes_val", "metrics": {"bbox": {"AP": ap}}}

    assert records.currency(record(head), [], ROOT)[0] == "current"
    old = record(root)
    state, why = records.currency(old, [old], ROOT)
    assert state == "stale" and "sampling_free/modeling/retinanet.py" in why
    # the same recipe and seed re-run after the change, with identical metrics: the whole group is carried
    old_seed1 = record(root, seed=1, ap=51.0)
    witness = record(head, ap=metrics["bbox"]["AP"])
    assert records.currency(old_seed1, [old, old_seed1, witness], ROOT)[0] == "carried"
    assert records.currency(old, [old, record(head, ap=50.1)], ROOT)[0] == "stale"  # not identical
    assert records.currency(old, [old, record(head, config_hash="xyz")], ROOT)[0] == "stale"  # another recipe
    assert records.currency({**record(head), "dirty": True}, [], ROOT)[0] == "dirty"


@needs_history
def test_a_witness_carries_records_made_at_other_commits_of_the_same_code():
    """Records of one recipe made at several commits between two changes of the family's code share one witness;
    a twin from before an earlier change (other code) carries nothing."""
    files = records.code_files("RetinaNet")
    changes = _git("log", "--format=%H", "--", *files).splitlines()
    # two successive changes of RetinaNet's code with other commits between them: those commits have `previous`'s code
    pairs = [(newer, older) for newer, older in zip(changes, changes[1:]) if _git("rev-parse", f"{newer}^") != older]
    assert pairs, "the history has no commit between two changes of RetinaNet's code"
    newer, previous = pairs[0]
    same_code_as_previous, older = _git("rev-parse", f"{newer}^"), _git("rev-parse", f"{previous}^")
    head = _git("rev-parse", "HEAD")

    def record(commit, seed=0, ap=50.0):
        return {"family": "retinanet", "commit": commit, "dirty": False, "config_hash": "abc", "seed": seed,
                "split": "shapes_val", "metrics": {"bbox": {"AP": ap}}}

    stale, twin, witness = record(previous, seed=3, ap=48.0), record(same_code_as_previous), record(head)
    assert records.currency(stale, [stale], ROOT)[0] == "stale"
    assert records.currency(stale, [stale, twin, witness], ROOT)[0] == "carried"
    assert records.currency(stale, [stale, twin, record(head, ap=50.5)], ROOT)[0] == "stale"  # not identical
    before = record(older)  # a twin at other code proves nothing about the record's
    assert records.currency(stale, [stale, before, witness], ROOT)[0] == "stale"
    assert not records._same_code(older, previous, files, ROOT)


def test_code_files_follow_the_imports_of_the_family():
    files = records.code_files("CascadeRCNN")
    assert {"sampling_free/modeling/cascade.py", "sampling_free/modeling/rcnn.py", "sampling_free/mechanism.py"} \
        <= set(files)
    assert "sampling_free/modeling/retinanet.py" not in files and all((ROOT / f).is_file() for f in files)
    assert "sampling_free/modeling/torchvision_internals.py" in files  # imported as "from . import ..."


def test_recipe_hash_ignores_seed_output_and_split_but_not_the_recipe():
    from sampling_free.config import load_config

    base = load_config(values={"SOLVER.MAX_ITER": 600})
    same = load_config(values={"SOLVER.MAX_ITER": 600, "SEED": 4, "OUTPUT_DIR": "x", "DATASETS.TEST": ["shapes_val"]})
    other = load_config(values={"SOLVER.MAX_ITER": 601})
    assert records.config_hash(base) == records.config_hash(same) != records.config_hash(other)


@needs_history
def test_the_generated_tables_are_what_the_records_give():
    """README.md's results table and results.md's protocol section equal what benchmarks/tables.py makes from
    results/records, and no record feeding them is stale or from an uncommitted tree."""
    done = subprocess.run([sys.executable, "benchmarks/tables.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_seconds_to_reach_interpolates_between_checkpoints():
    tables = _tables_module()
    points = [{"seconds": 100.0, "AP": 20.0}, {"seconds": 200.0, "AP": 40.0}, {"seconds": 300.0, "AP": 38.0}]
    assert tables.seconds_to_reach(points, 30.0) == pytest.approx(150.0)  # halfway from 20 to 40
    assert tables.seconds_to_reach(points, 10.0) == pytest.approx(50.0)  # from (0 s, 0 AP) to the first checkpoint
    assert tables.seconds_to_reach(points, 40.0) == pytest.approx(200.0)
    assert tables.seconds_to_reach(points, 41.0) is None


def _tables_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(tables)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return tables


def test_a_benchmark_without_every_test_seed_shows_progress_not_a_verdict(tmp_path):
    """Five seeds per side or no comparison: a half-run benchmark must not publish a one-seed verdict."""
    import json

    tables = _tables_module()
    bench = "faster_rcnn_shapes"
    choice = {"benchmark": bench, "config": "c.yaml", "split": "shapes_minival", "seeds": [100, 101],
              "baseline": {"chosen": {"SOLVER.CLIP_GRAD_NORM": 5.0}, "grid": []},
              "sampling_free": {"chosen": {"MODEL.RPN.POST_NMS_TOP_N_TRAIN": 1000}, "grid": []}}
    (tmp_path / "choices").mkdir()
    (tmp_path / "choices" / f"{bench}.json").write_text(json.dumps(choice))
    folder = tmp_path / "records" / bench / "shapes_val"
    folder.mkdir(parents=True)
    runs = [("baseline", s, ["SOLVER.CLIP_GRAD_NORM", "5.0"]) for s in range(5)]
    runs += [("sampling_free", 0, ["MODEL.RPN.POST_NMS_TOP_N_TRAIN", "1000"])]
    for variant, seed, overrides in runs:
        (folder / f"{variant}_seed{seed}.json").write_text(json.dumps(
            {"variant": variant, "seed": seed, "split": "shapes_val", "variant_overrides": overrides,
             "metrics": {"bbox": {"AP": 50.0 + seed}}}))
    table = tables.readme_table(tmp_path)
    assert "| Faster R-CNN |" not in table
    assert "Faster R-CNN (test seeds recorded: heuristic 5/5, sampling-free 1/5)" in table
    assert "Test runs under way" in tables.results_section(tmp_path)


def test_a_records_command_runs_as_printed():
    """The command in a record, split as a shell splits it, gives back the run's own words."""
    import shlex

    record = {"config_file": "configs/quickstart/x.yaml", "seed": 3, "variant": "baseline",
              "overrides": ["DATASETS.TEST", "['shapes_val']", "SOLVER.MAX_ITER", "600"],
              "variant_overrides": ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", "1.0"]}
    command = records.command_of(record)
    assert "\"['shapes_val']\"" in command
    assert shlex.split(command) == ["sampling-free", "compare", "--config-file", "configs/quickstart/x.yaml",
                                    "--seeds", "3", "--variants", "baseline", "DATASETS.TEST", "['shapes_val']",
                                    "SOLVER.MAX_ITER", "600", "baseline:MODEL.RETINANET.FOCAL_LOSS_GAMMA", "1.0"]
