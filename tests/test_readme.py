"""The README's command block runs as printed, in order, on a small copy of the built-in dataset.

The one change is the schedule: every training run is shrunk by its own config's checkpoint period (600 iterations
with a checkpoint every 500 -> 2 iterations with a checkpoint every 1), and the checkpoint iterations the README
names (``--iters 0000500``, the run-file table) are mapped the same way. The mapping only exists for iterations
the full-length run really writes, so naming one it does not write fails here. ``data`` writes fewer images."""
import json
import math
import re
import shlex
from pathlib import Path

import pytest

from sampling_free.cli import build_parser, main
from sampling_free.config import find_config
from sampling_free.config import load_config
from sampling_free.data import shapes

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- The commands in this block are run, in order, by tests/test_readme.py"
DATA_IMAGES = ["--train-images", "4", "--val-images", "2"]


def readme_commands() -> list[str]:
    text = README.read_text()
    block = text[text.index(MARKER):].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("sampling-free ")]


def argv_of(command: str) -> list[str]:
    """The arguments after ``sampling-free``, as a shell would split them (comments dropped)."""
    return shlex.split(command, comments=True)[1:]


def run_files_in_table() -> list[str]:
    """The checkpoint file names of the README's table of run files."""
    text = README.read_text()
    table = text[text.index("| `config.yaml` |"):].split("\n\n", 1)[0]
    return re.findall(r"model_\d{7}\.pth", table)


class Schedule:
    """The full-length schedule of the README's training runs and its shrunk stand-in."""

    def __init__(self, argv: list[str]):
        args = build_parser().parse_args(argv)  # the config and overrides as the command reads them
        cfg = load_config(find_config(args.config_file), args.opts)
        self.max_iter, self.period = cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD
        self.written = set(range(self.period, self.max_iter, self.period))  # besides model_final.pth

    def small_settings(self) -> list[str]:
        return ["SOLVER.MAX_ITER", str(math.ceil(self.max_iter / self.period)), "SOLVER.CHECKPOINT_PERIOD", "1"]

    def small_iteration(self, iteration: int) -> int:
        assert iteration in self.written, (f"the README names checkpoint iteration {iteration}, but the run writes "
                                           f"{sorted(self.written)} (every {self.period} of {self.max_iter})")
        return iteration // self.period


def test_the_block_is_found():
    commands = readme_commands()
    assert commands[0].startswith("sampling-free train") and len(commands) >= 8


def test_the_checkpoints_named_are_the_ones_the_default_run_writes():
    schedule = Schedule(argv_of(readme_commands()[0]))
    named = [int(re.search(r"\d{7}", f).group()) for f in run_files_in_table()]
    assert named, "the run-file table names no checkpoint"
    for iteration in named:
        schedule.small_iteration(iteration)


def test_readme_commands_run_as_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAMPLING_FREE_DATASETS", raising=False)  # the README relies on the default ./datasets
    target = tmp_path / "datasets" / "shapes"
    shapes.write_dataset(target, seed=0, splits={"train": 16, "val": 8})
    (target / "GENERATED.json").write_text(json.dumps({"version": shapes.VERSION, "seed": 0, "splits": shapes.SPLITS}))
    default = Schedule(argv_of(readme_commands()[0]))
    for command in readme_commands():
        argv = argv_of(command)
        if argv[0] in ("train", "compare"):
            argv += Schedule(argv).small_settings()
        elif argv[0] == "eval" and "--iters" in argv:
            at = argv.index("--iters") + 1
            while at < len(argv) and re.fullmatch(r"\d+", argv[at]):
                argv[at] = f"{default.small_iteration(int(argv[at])):07d}"
                at += 1
        elif argv[0] == "data":
            argv += DATA_IMAGES
        elif argv[0] == "export":
            pytest.importorskip("onnx")
        assert main(argv) == 0, command
    run = tmp_path / "output" / "retinanet_mobilenet_v2_shapes_free"
    for name in run_files_in_table():
        small = f"model_{default.small_iteration(int(name[6:13])):07d}.pth"
        assert (run / small).is_file() and (run / "inference" / "shapes_val" / small[:-4] / "metrics.json").is_file()
    assert (run / "model_final.pth").is_file() and (run / "prior.json").is_file()
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "retinanet.onnx").is_file()
    assert {r["file_name"] for r in json.loads((tmp_path / "detections.json").read_text())} <= \
        {f"datasets/shapes/val/{k:06d}.jpg" for k in range(8)}
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 8
    summary = json.loads((tmp_path / "output" / "compare" / "retinanet_mobilenet_v2_shapes" /
                          "comparison.json").read_text())["summary"]
    assert len(summary) == 6 and all(s["seeds"] == [0, 1, 2] for s in summary.values())
