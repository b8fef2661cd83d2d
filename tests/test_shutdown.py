"""Every fatal error ends the run promptly with a non-zero status and leaves no process behind -- with data-loader
workers, which ignore SIGINT/SIGTERM (so that a signal to the process group cannot kill them before the checkpoint)
and so cannot be stopped by the DataLoader's own SIGTERM at exit: before ``data.build.batches`` stopped them itself,
a data error in a worker left the run waiting for them forever."""
import os
import shutil
import signal
import subprocess
import time

import pytest

from sampling_free.checkpoint import load_checkpoint
from test_fault_tolerance import _command, _env, _wait_for

EXIT_WITHIN = 90  # seconds from start, start-up (imports, dataset, model) included; a hang never ends


@pytest.fixture()
def options(tiny_dataset_overrides):
    return {**tiny_dataset_overrides, "SOLVER.MAX_ITER": 1000, "SOLVER.CHECKPOINT_PERIOD": 1000,
            "DATALOADER.NUM_WORKERS": 2, "MODEL.BACKBONE.NORM": "FrozenBN"}


def _start(options, **overrides):
    return subprocess.Popen(_command({**options, **overrides}), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def _finish(process) -> tuple[int, str, float]:
    """(exit status, stderr, seconds) of a run that must end by itself; kills its whole group if it does not."""
    start = time.time()
    try:
        stderr = process.communicate(timeout=EXIT_WITHIN)[1].decode()
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the run did not exit within {EXIT_WITHIN} s")
    return process.returncode, stderr, time.time() - start


def _assert_nothing_left(group: int, timeout: float = 10.0) -> None:
    """No process of the run's process group (its workers) is alive, allowing init a moment to reap them."""
    end = time.time() + timeout
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        assert time.time() < end, f"processes of the run are still alive: {_group_members(group)}"
        time.sleep(0.1)


def _group_members(group: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid,stat,cmd", "--no-headers", "-g", str(group)], capture_output=True)
    return out.stdout.decode().splitlines()


def _wait_for_first_step(run, process) -> None:
    _wait_for(run / "metrics.jsonl", process)
    while not (run / "metrics.jsonl").read_text().strip():
        assert process.poll() is None
        time.sleep(0.05)


def _broken_copy(tiny_shapes, tmp_path, split):
    """A copy of ``tiny_shapes`` whose ``split`` images are all truncated JPEGs."""
    root = tmp_path / "data"
    shutil.copytree(tiny_shapes, root)
    for image in (root / split).iterdir():
        image.write_bytes(image.read_bytes()[:300])
    return root


def test_a_data_error_in_a_worker_ends_the_run_with_the_one_line_message(options, tiny_shapes, tmp_path):
    root = _broken_copy(tiny_shapes, tmp_path, "train")
    process = _start(options, OUTPUT_DIR=str(tmp_path / "run"),
                     **{"DATASETS.TRAIN": [f"coco:{root}/annotations/instances_train.json:{root}/train"]})
    code, stderr, _ = _finish(process)
    assert code == 2, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and ".jpg: cannot read image (image id " in last, stderr[-2000:]
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr
    _assert_nothing_left(process.pid)


def test_a_data_error_during_evaluation_ends_the_run(options, tiny_shapes, tmp_path):
    root = _broken_copy(tiny_shapes, tmp_path, "val")
    command = _command({**options, "OUTPUT_DIR": str(tmp_path / "run"), "SOLVER.MAX_ITER": 1,
                        "DATASETS.TEST": [f"coco:{root}/annotations/instances_val.json:{root}/val"]})
    command.remove("--skip-test")
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    code, stderr, _ = _finish(process)
    assert code == 2 and "val/" in stderr and ": cannot read image" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr
    _assert_nothing_left(process.pid)


def test_a_worker_killed_ends_the_run_promptly(options, tmp_path):
    """A worker killed by the kernel (out of memory) or a crash: the main process stops, and the other worker too."""
    process = _start(options, OUTPUT_DIR=str(tmp_path / "run"))
    _wait_for_first_step(tmp_path / "run", process)
    workers = _children(process.pid)
    assert len(workers) == 2, _group_members(process.pid)
    os.kill(workers[0], signal.SIGKILL)
    code, stderr, seconds = _finish(process)
    assert code != 0 and f"pid {workers[0]}" in stderr and "killed by signal" in stderr, stderr[-2000:]
    assert seconds < 30
    _assert_nothing_left(process.pid)


def test_a_non_finite_loss_ends_the_run_with_workers(options, tmp_path):
    process = _start(options, OUTPUT_DIR=str(tmp_path / "run"),
                     **{"SOLVER.BASE_LR": 1e12, "SOLVER.WARMUP_ITERS": 0})
    code, stderr, _ = _finish(process)
    assert code == 2 and "training stopped before the update" in stderr, stderr[-2000:]
    _assert_nothing_left(process.pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_group_still_checkpoints_and_leaves_nothing(options, tmp_path, sig):
    """Ctrl-C, SLURM and most job schedulers signal every process of the job, data-loader workers included: a worker
    that died of it must not take the run down before the main process has written its checkpoint."""
    run = tmp_path / "run"
    process = _start(options, OUTPUT_DIR=str(run))
    _wait_for_first_step(run, process)
    os.killpg(process.pid, sig)
    code, stderr, seconds = _finish(process)
    assert code == 128 + sig, stderr[-2000:]
    state = load_checkpoint(run / (run / "last_checkpoint").read_text())
    assert 1 <= state["iteration"] < 1000
    assert seconds < 30
    _assert_nothing_left(process.pid)


def _children(pid: int) -> list[int]:
    text = open(f"/proc/{pid}/task/{pid}/children").read()
    return [int(p) for p in text.split()]
