"""SSD and ATSS pass the run checks the older families pass: training and evaluation on VOC-layout data, resume
continuing the same run, and two processes training like one."""
import json
import os
import subprocess
import sys

import pytest
import torch

from sampling_free.cli import main
from sampling_free.checkpoint import load_checkpoint

ARCHS = {
    "ssd": {"MODEL.META_ARCHITECTURE": "SSD", "MODEL.BACKBONE.NAME": "mobilenet_v2", "MODEL.SSD.SIZE": 96,
            "MODEL.SSD.EXTRA_CHANNELS": [64, 32, 32, 16], "MODEL.SSD.MIN_RATIO": 0.1},
    "atss": {"MODEL.META_ARCHITECTURE": "ATSS", "MODEL.FCOS.NUM_CONVS": 1, "MODEL.FPN.OUT_CHANNELS": 64,
             "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [1.0], "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1},
}


def _args(overrides: dict) -> list[str]:
    return [x for k, v in overrides.items() for x in (k, v if isinstance(v, str) else repr(v))]


def _losses(run_dir):
    return {r["iteration"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_voc_layout_training_resumes_the_same_run_and_evaluates(tiny_dataset_overrides, shapes_voc, tmp_path, arch):
    opts = {**tiny_dataset_overrides, **ARCHS[arch], "MODEL.SAMPLING_FREE_ON": True,
            "DATASETS.TRAIN": [f"voc:{shapes_voc}:train"], "DATASETS.TEST": [f"voc:{shapes_voc}:val"],
            "SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 2, "MODEL.BACKBONE.NORM": "FrozenBN"}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(["train", "--skip-test", *_args({**opts, "OUTPUT_DIR": str(whole)})]) == 0
    assert main(["train", "--skip-test", *_args({**opts, "OUTPUT_DIR": str(resumed), "SOLVER.MAX_ITER": 2})]) == 0
    assert main(["train", *_args({**opts, "OUTPUT_DIR": str(resumed)})]) == 0
    assert "resumed from" in (resumed / "log.txt").read_text()
    a, b = _losses(whole), _losses(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for iteration in a:
        assert b[iteration] == pytest.approx(a[iteration], rel=1e-4)
    (metrics,) = resumed.glob("inference/*/model_final/metrics.json")
    assert {"bbox", "voc"} <= set(json.loads(metrics.read_text()))


def test_two_processes_train_atss_like_one_with_the_same_global_batch(tiny_dataset_overrides, tmp_path):
    """torchrun, gloo: 2 x 2 images against 1 x 4, guided ratio synced; the tolerances are
    tests/test_fault_tolerance.py's. (ATSS's head uses GroupNorm; SSDlite's BatchNorm normalises each process's
    own images, as in torchvision's reference without --sync-bn, so its two runs are not the same computation.)"""
    opts = {**tiny_dataset_overrides, **ARCHS["atss"], "MODEL.SAMPLING_FREE_ON": True, "SOLVER.MAX_ITER": 4,
            "SOLVER.IMS_PER_BATCH": 4, "MODEL.BACKBONE.NORM": "FrozenBN",
            "MODEL.SAMPLING_FREE.SYNC_GUIDED_RATIO": True}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "single", tmp_path / "double"
    command = [sys.executable, "-m", "sampling_free.cli", "train", "--skip-test"]
    subprocess.run([*command, *_args({**opts, "OUTPUT_DIR": str(single)})], check=True, env=env, capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *command[1:], *_args({**opts, "OUTPUT_DIR": str(double)})], env=env, capture_output=True)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    assert "(2 processes)" in (double / "log.txt").read_text()
    one, two = _losses(single), _losses(double)
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for iteration in one:
        assert two[iteration] == pytest.approx(one[iteration], rel=1e-3)
    a, b = load_checkpoint(single / "model_final.pth")["model"], load_checkpoint(double / "model_final.pth")["model"]
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-4


def test_two_processes_train_ssd_to_a_loadable_checkpoint(tiny_dataset_overrides, tmp_path):
    opts = {**tiny_dataset_overrides, **ARCHS["ssd"], "MODEL.SAMPLING_FREE_ON": True, "SOLVER.MAX_ITER": 2,
            "SOLVER.IMS_PER_BATCH": 4, "OUTPUT_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "sampling_free.cli", "train", "--skip-test", *_args(opts)],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    assert "(2 processes)" in (tmp_path / "log.txt").read_text()
    losses = _losses(tmp_path)
    assert sorted(losses) == [1, 2] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    state = load_checkpoint(tmp_path / "model_final.pth")
    assert float(state["model"]["prior.value"]) > 0  # π counted and stored
