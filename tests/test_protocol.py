"""benchmarks/protocol.py: a resumed protocol trains only the runs whose record is missing."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dry_run(*args) -> list[str]:
    done = subprocess.run([sys.executable, "benchmarks/protocol.py", *args, "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_tune_skips_runs_whose_record_was_made_by_the_same_command(tmp_path):
    results = tmp_path / "results"
    everything = dry_run("tune", "retinanet_shapes", "--results", str(results))
    assert len(everything) == 2 * (3 + 3)  # two seeds x each side's grid of three
    folder = results / "records" / "retinanet_shapes" / "shapes_minival"
    folder.mkdir(parents=True)
    same = {"config_file": "configs/quickstart/retinanet_mobilenet_v2_shapes.yaml",
            "overrides": ["DATASETS.TEST", "['shapes_minival']"],
            "variant_overrides": ["MODEL.CLASSIFICATION_SCALE", "2.0"]}
    (folder / "sampling_free_CLASSIFICATION_SCALE-2.0_seed100.json").write_text(json.dumps(same))
    other = {**same, "overrides": ["DATASETS.TEST", "['shapes_minival']", "SOLVER.MAX_ITER", "10"]}
    (folder / "sampling_free_CLASSIFICATION_SCALE-4.0_seed100.json").write_text(
        json.dumps({**other, "variant_overrides": ["MODEL.CLASSIFICATION_SCALE", "4.0"]}))
    left = dry_run("tune", "retinanet_shapes", "--results", str(results))
    assert [c for c in everything if c not in left] == [c for c in everything if "--seeds 100" in c
                                                         and "sampling_free:MODEL.CLASSIFICATION_SCALE 2.0" in c]
    assert len(left) == len(everything) - 1  # the record made with other overrides is trained again
    assert dry_run("tune", "retinanet_shapes", "--results", str(results), "--rerun") == everything


def test_explore_trains_a_changed_choice_on_validation_only_and_records_it_apart(tmp_path):
    results = tmp_path / "results"
    (results / "choices").mkdir(parents=True)
    choice = {"sampling_free": {"chosen": {"MODEL.CLASSIFICATION_SCALE": 2.0}},
              "baseline": {"chosen": {"MODEL.RETINANET.FOCAL_LOSS_GAMMA": 1.0}}}
    (results / "choices" / "retinanet_shapes.json").write_text(json.dumps(choice))
    runs = dry_run("explore", "retinanet_shapes", "--results", str(results), "--set", "SOLVER.MAX_ITER", "1800")
    assert len(runs) == 2 and all("shapes_minival" in r and "shapes_val" not in r for r in runs)  # validation only
    assert {r.split("--seeds ")[1].split()[0] for r in runs} == {"100", "101"}
    for r in runs:
        assert "sampling_free:MODEL.CLASSIFICATION_SCALE 2.0" in r and "sampling_free:SOLVER.MAX_ITER 1800" in r
        assert f"--records {results / 'research' / 'records' / 'retinanet_shapes'}" in r
    done = subprocess.run([sys.executable, "benchmarks/protocol.py", "explore", "retinanet_shapes", "--results",
                           str(results), "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "explore needs --set KEY VALUE" in done.stderr


def test_explore_reports_beside_the_choice(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import protocol

    b = protocol.BENCHMARKS["retinanet_shapes"]
    chosen, tried = {"MODEL.CLASSIFICATION_SCALE": 2.0}, {"MODEL.CLASSIFICATION_SCALE": 2.0, "SOLVER.MAX_ITER": "1800"}
    for folder, setting, aps in ((tmp_path / "records", chosen, (50.0, 52.0)),
                                 (tmp_path / "research" / "records", tried, (53.0, 54.0))):
        for seed, ap in zip(protocol.TUNE_SEEDS, aps):
            path = protocol.record_path(folder / "retinanet_shapes", "shapes_minival", "sampling_free",
                                        protocol.slug_of(setting), seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"metrics": {"bbox": {"AP": ap}}}))
    line = protocol.explored("retinanet_shapes", b, {"sampling_free": {"chosen": chosen}}, "sampling_free", tried,
                             tmp_path / "research")
    assert "53.00, 54.00 (mean 53.50)" in line and "50.00, 52.00 (mean 51.00)" in line


def test_slug_is_a_plain_file_name():
    """Run folders and record names come from the overrides: a list value must not put brackets, spaces or a path
    separator in them, and a plain one keeps its existing name (the committed records are found by it)."""
    from sampling_free.records import slug_of

    assert slug_of({"MODEL.CLASSIFICATION_SCALE": 2.0}) == "CLASSIFICATION_SCALE-2.0"
    assert slug_of({"SOLVER.STEPS": "[1350, 1650]", "SOLVER.MAX_ITER": "1800"}) == "MAX_ITER-1800_STEPS-1350+1650"
    assert slug_of({"MODEL.X": "a/b"}) == "X-a-b"
