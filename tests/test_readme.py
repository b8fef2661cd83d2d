"""The README's command block runs as written, in order, with small settings appended (2 iterations, a small copy of
the built-in dataset standing in for the default one, fewer seeds)."""
import json
import shlex
from pathlib import Path

import pytest

from sampling_free.cli import main
from sampling_free.data import shapes

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- The commands in this block are run, in order, by tests/test_readme.py"
SMALL = ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1", "DATALOADER.NUM_WORKERS", "0"]
# the only edits to the commands themselves: an iteration that exists after 2 iterations, fewer seeds and images
SUBSTITUTIONS = {"0000300": "0000001", "--seeds 0 1 2": "--seeds 0 --variants baseline sampling_free"}
APPEND = {"train": SMALL, "eval": [], "compare": SMALL, "prior": [], "data": ["--train-images", "4",
                                                                              "--val-images", "2"]}


def readme_commands() -> list[str]:
    text = README.read_text()
    block = text[text.index(MARKER):].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("sampling-free ")]


def test_the_block_is_found():
    commands = readme_commands()
    assert commands[0].startswith("sampling-free train") and len(commands) >= 8


def test_readme_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAMPLING_FREE_DATASETS", raising=False)  # the README relies on the default ./datasets
    target = tmp_path / "datasets" / "shapes"
    shapes.write_dataset(target, seed=0, splits={"train": 16, "val": 8})
    (target / "GENERATED.json").write_text(json.dumps({"version": shapes.VERSION, "seed": 0, "splits": shapes.SPLITS}))
    for command in readme_commands():
        for old, new in SUBSTITUTIONS.items():
            command = command.replace(old, new)
        argv = shlex.split(command, comments=True)[1:]
        argv += APPEND.get(argv[0], [])
        if argv[0] == "export":
            pytest.importorskip("onnx")
        assert main(argv) == 0, command
    run = tmp_path / "output" / "retinanet_mobilenet_v2_shapes_free"
    assert (run / "inference" / "shapes_val" / "model_0000001" / "metrics.json").is_file()
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "retinanet.onnx").is_file()
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 8
    assert (tmp_path / "output" / "compare" / "retinanet_mobilenet_v2_shapes" / "comparison.md").is_file()
