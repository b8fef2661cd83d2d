"""docs/plug_in.md's training loop runs as written (2 steps instead of 300, on a 16-image copy of the built-in
dataset): a torchvision-style loop trains converted stock torchvision models."""
import math
import re

from sampling_free.data import shapes
from paths import REPO

DOC = REPO / "docs" / "plug_in.md"


def test_the_documented_loop_trains_converted_torchvision_models(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shapes.write_dataset(tmp_path / "shapes", seed=0, splits={"train": 16})
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[-1]
    assert "STEPS = 300" in block
    namespace = {}
    exec(compile(block.replace("STEPS = 300", "STEPS = 2"), str(DOC), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    losses = [line for line in printed if "last losses" in line]
    assert [line.split()[0] for line in losses] == ["retinanet", "faster_rcnn"]
    assert "classification" in losses[0] and "loss_objectness" in losses[1]  # torchvision's loss names
    values = [float(v) for line in losses for v in re.findall(r": (-?[\d.e+-]+|nan|inf)[,}]", line)]
    assert values and all(math.isfinite(v) for v in values)
    assert all(0 < float(line.split("π =")[1].split()[0]) < 0.05 for line in losses)
