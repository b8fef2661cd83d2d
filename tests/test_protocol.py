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
