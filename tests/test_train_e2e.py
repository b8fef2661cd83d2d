"""A tiny run through the command line: train -> checkpoint -> resume -> eval, on a small copy of ``shapes``."""
import json

import pytest
import yaml

from sampling_free.cli import main
from paths import CONFIGS


def _args(overrides: dict) -> list[str]:
    return [x for k, v in overrides.items() for x in (k, repr(v) if not isinstance(v, str) else v)]


def _losses(run_dir):
    return {r["iteration"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def full_run(tiny_dataset_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    opts = {**tiny_dataset_overrides, "MODEL.SAMPLING_FREE_ON": True, "SOLVER.MAX_ITER": 4,
            "SOLVER.CHECKPOINT_PERIOD": 2, "OUTPUT_DIR": str(out)}
    assert main(["train", "--config-file", str(CONFIGS / "quickstart/retinanet_mobilenet_v2_shapes.yaml"),
                 *_args(opts)]) == 0
    return out, opts


def test_run_folder_holds_everything(full_run):
    out, _ = full_run
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "prior.json", "model_0000002.pth", "model_final.pth",
                 "last_checkpoint"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "config.yaml").read_text())["SOLVER"]["MAX_ITER"] == 4
    prior = json.loads((out / "prior.json").read_text())
    assert 0 < prior["prior"] < 0.05 and prior["num_classes"] == 6
    assert prior["num_foreground"] > 0 and prior["num_background"] > 20 * prior["num_foreground"]
    assert sorted(_losses(out)) == [1, 2, 3, 4]
    (metrics_file,) = out.glob("inference/*/model_final/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert set(metrics["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert (metrics_file.parent / "bbox.json").is_file()


def test_resume_continues_the_same_run(full_run, tmp_path):
    full_out, opts = full_run
    opts = {**opts, "OUTPUT_DIR": str(tmp_path)}
    assert main(["train", "--skip-test", *_args({**opts, "SOLVER.MAX_ITER": 2})]) == 0
    assert main(["train", "--skip-test", *_args(opts)]) == 0
    assert "resumed from" in (tmp_path / "log.txt").read_text()
    resumed, full = _losses(tmp_path), _losses(full_out)
    assert sorted(resumed) == [1, 2, 3, 4]
    for it in (3, 4):
        assert resumed[it] == pytest.approx(full[it], rel=1e-4)


def test_eval_by_iteration_numbers(full_run, capsys):
    out, _ = full_run
    assert main(["eval", "--config-file", str(out / "config.yaml"), "--iters", "0000002", "final"]) == 0
    assert len(list(out.glob("inference/*/model_0000002/metrics.json"))) == 1


def test_bad_override_is_a_clear_error(capsys):
    assert main(["train", "SOLVER.MAX_ITR", "3"]) == 2
    assert "did you mean 'SOLVER.MAX_ITER'" in capsys.readouterr().err


@pytest.mark.parametrize("mask_on", [False, True], ids=["faster_rcnn", "mask_rcnn"])
def test_rcnn_trains_and_evaluates_boxes_and_masks(tiny_dataset_overrides, tmp_path, mask_on):
    opts = {**tiny_dataset_overrides, "MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.MASK_ON": mask_on,
            "MODEL.SAMPLING_FREE_ON": True, "MODEL.FPN.MIN_LEVEL": 2, "MODEL.FPN.TOP_BLOCK": "maxpool",
            "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1, "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": 64,
            "MODEL.ROI_MASK_HEAD.CONV_LAYERS": [16, 16], "MODEL.RPN.POST_NMS_TOP_N_TRAIN": 200,
            "MODEL.RPN.POST_NMS_TOP_N_TEST": 100, "SOLVER.MAX_ITER": 3, "SOLVER.CHECKPOINT_PERIOD": 3,
            "OUTPUT_DIR": str(tmp_path)}
    assert main(["train", *_args(opts)]) == 0
    prior = json.loads((tmp_path / "prior.json").read_text())
    assert prior["num_classes"] == 1  # the RPN's class-agnostic objectness prior
    (metrics_file,) = tmp_path.glob("inference/*/model_final/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert set(metrics["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert ("segm" in metrics) == mask_on
    assert (metrics_file.parent / "segm.json").is_file() == mask_on
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_objectness", "loss_classifier", "rpn_samples", "roi_samples"} <= set(records[-1])


RCNN_TINY = {"MODEL.FPN.MIN_LEVEL": 2, "MODEL.FPN.TOP_BLOCK": "maxpool", "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1,
             "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": 64, "MODEL.RPN.POST_NMS_TOP_N_TRAIN": 200,
             "MODEL.RPN.POST_NMS_TOP_N_TEST": 100}


@pytest.mark.parametrize("arch", ["RetinaNet", "CascadeRCNN"])
def test_journal_options_resume_with_their_frozen_ratio_and_sigmas(tiny_dataset_overrides, tmp_path, arch):
    """Guided ratio frozen after 2 steps, learned loss weights: interrupted at 2 and resumed, the run continues
    exactly (the frozen ratios and the σ live in the checkpoint)."""
    opts = {**tiny_dataset_overrides, "MODEL.META_ARCHITECTURE": arch, **(RCNN_TINY if arch != "RetinaNet" else {}),
            "MODEL.SAMPLING_FREE_ON": True, "MODEL.SAMPLING_FREE.GUIDED_WARMUP_ITERS": 2,
            "MODEL.SAMPLING_FREE.LEARNED_LOSS_WEIGHTS": True, "SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 2,
            "MODEL.SAMPLING_FREE.PER_CLASS_PRIOR": arch == "RetinaNet"}
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", "--skip-test", *_args({**opts, "OUTPUT_DIR": str(whole)})]) == 0
    assert main(["train", "--skip-test", *_args({**opts, "OUTPUT_DIR": str(parts), "SOLVER.MAX_ITER": 2})]) == 0
    assert main(["train", "--skip-test", *_args({**opts, "OUTPUT_DIR": str(parts)})]) == 0
    a, b = _losses(whole), _losses(parts)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for it in (3, 4):
        assert b[it] == pytest.approx(a[it], rel=1e-4)
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_uncertainty" in r for r in records)
    if arch == "RetinaNet":  # the per-class priors, recorded with the counts they come from
        prior = json.loads((whole / "prior.json").read_text())
        total = prior["num_foreground"] + prior["num_background"]
        assert prior["class_priors"] == pytest.approx(
            [max(n, 0.5) / total for n in prior["foreground_per_class"].values()])


def test_gradient_clipping_is_logged_and_acts(tiny_dataset_overrides, tmp_path):
    """With SOLVER.CLIP_GRAD_NORM on, each record carries the pre-clip norm and the fraction of steps clipped; a
    clip far below the norm changes the second step, one far above it changes nothing."""
    opts = {**tiny_dataset_overrides, "MODEL.SAMPLING_FREE_ON": True, "SOLVER.MAX_ITER": 2, "SOLVER.LOG_PERIOD": 1}
    config = ["--config-file", str(CONFIGS / "quickstart/retinanet_mobilenet_v2_shapes.yaml")]
    runs = {}
    for clip in (1e-3, 1e9, 0.0):
        out = tmp_path / str(clip)
        assert main(["train", "--skip-test", *config, *_args({**opts, "SOLVER.CLIP_GRAD_NORM": clip,
                                                             "OUTPUT_DIR": str(out)})]) == 0
        runs[clip] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tight, loose, off = runs[1e-3], runs[1e9], runs[0.0]
    assert [r["grad_clipped"] for r in tight] == [1.0, 1.0] and [r["grad_clipped"] for r in loose] == [0.0, 0.0]
    assert tight[0]["grad_norm"] == pytest.approx(loose[0]["grad_norm"]) and tight[0]["grad_norm"] > 1e-3
    assert "grad_norm" not in off[0]
    assert loose[1]["loss"] == pytest.approx(off[1]["loss"], rel=1e-6)
    assert tight[1]["loss"] != pytest.approx(off[1]["loss"], rel=1e-3)


def test_sampling_free_clip_leaves_the_baseline_alone(tiny_dataset_overrides, tmp_path):
    """MODEL.SAMPLING_FREE.CLIP_GRAD_NORM clips the run whose guided loss is on and no other: the heuristic run's
    losses equal an unclipped run's; SOLVER.CLIP_GRAD_NORM, when set, wins."""
    opts = {**tiny_dataset_overrides, "SOLVER.MAX_ITER": 2, "SOLVER.LOG_PERIOD": 1}
    config = ["--config-file", str(CONFIGS / "quickstart/retinanet_mobilenet_v2_shapes.yaml")]

    def run(name, **overrides):
        out = tmp_path / name
        assert main(["train", "--skip-test", *config, *_args({**opts, **overrides, "OUTPUT_DIR": str(out)})]) == 0
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    free = run("free", **{"MODEL.SAMPLING_FREE_ON": True, "MODEL.SAMPLING_FREE.CLIP_GRAD_NORM": 1e-3})
    assert [r["grad_clipped"] for r in free] == [1.0, 1.0]
    baseline = run("baseline", **{"MODEL.SAMPLING_FREE_ON": False, "MODEL.SAMPLING_FREE.CLIP_GRAD_NORM": 1e-3})
    plain = run("plain", **{"MODEL.SAMPLING_FREE_ON": False})
    assert "grad_norm" not in baseline[0]
    assert baseline[1]["loss"] == pytest.approx(plain[1]["loss"], rel=1e-6)
    solver_wins = run("solver", **{"MODEL.SAMPLING_FREE_ON": True, "MODEL.SAMPLING_FREE.CLIP_GRAD_NORM": 1e-3,
                                   "SOLVER.CLIP_GRAD_NORM": 1e9})
    assert [r["grad_clipped"] for r in solver_wins] == [0.0, 0.0]


def test_non_finite_loss_stops_the_run_with_an_error(tiny_dataset_overrides, tmp_path, capsys):
    """A learning rate that blows the weights up ends the command with status 2 and a message naming the loss and
    the remedies, before the bad update reaches a checkpoint."""
    out = tmp_path / "blowup"
    opts = {**tiny_dataset_overrides, "MODEL.SAMPLING_FREE_ON": True, "SOLVER.MAX_ITER": 6, "SOLVER.WARMUP_ITERS": 0,
            "SOLVER.BASE_LR": 1e12, "SOLVER.CHECKPOINT_PERIOD": 1, "OUTPUT_DIR": str(out)}
    status = main(["train", "--skip-test", "--config-file", str(CONFIGS / "quickstart/retinanet_mobilenet_v2_shapes.yaml"),
                   *_args(opts)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "training stopped before the update" in err and "MODEL.SAMPLING_FREE.CLIP_GRAD_NORM" in err
    assert not (out / "model_final.pth").exists()
