"""The comparison command (ablation over seeds, resumable), its statistics, plots, and TensorBoard logging."""
import json
from pathlib import Path

import pytest

from sampling_free import records
from sampling_free.cli import main
from sampling_free.compare import markdown_table, summarise


def test_summary_statistics_by_hand():
    aps = {"AP": 0, "AP50": 0, "AP75": 0, "APs": 0, "APm": 0, "APl": 0}
    results = {"baseline": {0: {"bbox": {**aps, "AP": 30.0}}, 1: {"bbox": {**aps, "AP": 34.0}}},
               "no_heuristic": {0: {"diverged": "iteration 3: loss_retina_cls is nan"}, 1: {"bbox": {**aps, "AP": 1.0}}}}
    summary = summarise(results)
    assert summary["baseline"]["bbox"]["AP"]["mean"] == 32.0
    assert summary["baseline"]["bbox"]["AP"]["std"] == pytest.approx(2.8284271, rel=1e-6)  # sqrt(((-2)^2+2^2)/1)
    assert summary["no_heuristic"]["diverged"] == [0] and summary["no_heuristic"]["bbox"]["AP"]["std"] == 0.0
    table = markdown_table(summary, {"baseline": "heuristic"})
    assert "| heuristic | 32.0 ± 2.8 |" in table and "2 (1 diverged)" in table


def test_summary_of_a_size_the_test_set_lacks():
    """COCO reports AP of an absent object size as nan on every seed: shown as absent, not a crash in stdev."""
    aps = {"AP": 50.0, "AP50": 70.0, "AP75": 55.0, "APs": 50.0, "APm": float("nan"), "APl": float("nan")}
    summary = summarise({"baseline": {0: {"bbox": dict(aps)}, 1: {"bbox": {**aps, "AP": 52.0}}}})
    assert summary["baseline"]["bbox"]["AP"]["mean"] == 51.0
    assert summary["baseline"]["bbox"]["APl"]["mean"] != summary["baseline"]["bbox"]["APl"]["mean"]  # nan
    row = markdown_table(summary, {"baseline": "heuristic"}).splitlines()[-1]
    assert row.startswith("| heuristic | 51.0 ± 1.4 |") and row.count("—") == 2


def test_compare_runs_resumes_and_plots(tiny_dataset_overrides, tmp_path, capsys):
    opts = [x for k, v in {**tiny_dataset_overrides, "SOLVER.MAX_ITER": 2}.items()
            for x in (k, v if isinstance(v, str) else repr(v))]
    args = ["compare", "--seeds", "0", "--variants", "baseline", "sampling_free", "--out", str(tmp_path), *opts]
    assert main(args) == 0
    for name in ("comparison.md", "comparison.json", "comparison_ap.png", "comparison_loss.png"):
        assert (tmp_path / name).is_file(), name
    summary = json.loads((tmp_path / "comparison.json").read_text())["summary"]
    assert set(summary) == {"baseline", "sampling_free"}
    assert "sampling-free (all three)" in (tmp_path / "comparison.md").read_text()
    final = tmp_path / "sampling_free" / "seed0" / "model_final.pth"
    stamp = final.stat().st_mtime_ns
    assert main(args) == 0  # a second call reads the finished runs back instead of training again
    assert final.stat().st_mtime_ns == stamp


def test_plot_and_tensorboard(tiny_dataset_overrides, tmp_path):
    opts = {**tiny_dataset_overrides, "SOLVER.MAX_ITER": 3, "SOLVER.CHECKPOINT_PERIOD": 3, "OUTPUT_DIR": str(tmp_path)}
    assert main(["train", "--skip-test", *[x for k, v in opts.items() for x in (k, v if isinstance(v, str)
                                                                                 else repr(v))]]) == 0
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 5000
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [1, 2, 3]


def test_compare_writes_records_with_threshold_parity_and_scoped_overrides(tiny_dataset_overrides, tmp_path):
    """One run per variant: each is evaluated at both sides' test thresholds, a ``variant:KEY`` override reaches
    that variant alone, and each run leaves a record a table can be made from."""
    opts = [x for k, v in {**tiny_dataset_overrides, "SOLVER.MAX_ITER": 2}.items()
            for x in (k, v if isinstance(v, str) else repr(v))]
    args = ["compare", "--seeds", "3", "--variants", "baseline", "sampling_free", "--out", str(tmp_path / "runs"),
            "--records", str(tmp_path / "records"), "baseline:MODEL.RETINANET.FOCAL_LOSS_GAMMA", "1.5", *opts]
    assert main(args) == 0
    base_cfg = (tmp_path / "runs" / "baseline" / "seed3" / "config.yaml").read_text()
    free_cfg = (tmp_path / "runs" / "sampling_free" / "seed3" / "config.yaml").read_text()
    assert "FOCAL_LOSS_GAMMA: 1.5" in base_cfg and "FOCAL_LOSS_GAMMA: 2.0" in free_cfg
    found = {r["variant"]: r for r in records.read_records(tmp_path / "records")}
    assert set(found) == {"baseline", "sampling_free"}
    base, free = found["baseline"], found["sampling_free"]
    assert Path(base["path"]).name == "baseline_FOCAL_LOSS_GAMMA-1.5_seed3.json"
    assert base["variant_overrides"] == ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", "1.5"] and free["variant_overrides"] == []
    assert base["seed"] == 3 and base["family"] == "retinanet" and base["iterations"] == 2
    assert "baseline:MODEL.RETINANET.FOCAL_LOSS_GAMMA 1.5" in base["command"]
    assert base["config_hash"] != free["config_hash"]
    # at its own threshold a run's metrics are its final evaluation; at the other side's, a second evaluation
    for record, own, other in ((base, "baseline", "sampling_free"), (free, "sampling_free", "baseline")):
        assert record["metrics_at_threshold"][own] == record["metrics"]
        run = tmp_path / "runs" / record["variant"] / "seed3"
        written = json.loads(next(run.glob(f"inference/*/model_final_at_{other}_threshold/metrics.json")).read_text())
        assert record["metrics_at_threshold"][other]["bbox"] == {k: written["bbox"][k] for k in written["bbox"]}
    # sampling-free's threshold (π·C, well under the baseline's 0.05) keeps more detections of the same model
    assert free["metrics_at_threshold"]["sampling_free"]["detections_per_image"] >= \
        free["metrics_at_threshold"]["baseline"]["detections_per_image"]
    paired = json.loads((tmp_path / "runs" / "comparison.json").read_text())["paired"]["sampling_free"]
    at_base = free["metrics_at_threshold"]["baseline"]["bbox"]["AP"] - base["metrics"]["bbox"]["AP"]
    assert paired["baseline"]["per_seed"] == [pytest.approx(at_base)]


def test_scoped_overrides_name_a_variant():
    from sampling_free.compare import split_scoped_overrides

    common, scoped = split_scoped_overrides(["SOLVER.MAX_ITER", "5", "sampling_free:MODEL.CLASSIFICATION_SCALE", "2"])
    assert common == ["SOLVER.MAX_ITER", "5"] and scoped == {"sampling_free": ["MODEL.CLASSIFICATION_SCALE", "2"]}
    with pytest.raises(ValueError, match="'free' is not a variant"):
        split_scoped_overrides(["free:MODEL.CLASSIFICATION_SCALE", "2"])


def test_a_run_killed_while_writing_its_metrics_is_evaluated_again_not_read_half_written(
        tiny_dataset_overrides, tmp_path, monkeypatch):
    """``metrics.json`` means "this run is finished" to compare: it must appear whole or not at all. A process
    killed after writing its bytes but before they are in place leaves no metrics.json; the rerun evaluates the
    finished model again (without training it again) and finds the same numbers."""
    import os

    import sampling_free.files

    opts = [x for k, v in {**tiny_dataset_overrides, "SOLVER.MAX_ITER": 2}.items()
            for x in (k, v if isinstance(v, str) else repr(v))]
    args = ["compare", "--seeds", "0", "--variants", "baseline", "--out", str(tmp_path), *opts]
    assert main(args) == 0
    run = tmp_path / "baseline" / "seed0"
    metrics = next(run.glob("inference/*/model_final/metrics.json"))
    first = json.loads(metrics.read_text())["bbox"]
    metrics.unlink()
    stamp = (run / "model_final.pth").stat().st_mtime_ns
    real_replace = os.replace

    def killed_at_metrics(src, dst):
        if Path(dst).name == "metrics.json":
            raise SystemExit(137)  # the moment between writing the bytes and putting them in place
        real_replace(src, dst)

    monkeypatch.setattr(sampling_free.files.os, "replace", killed_at_metrics)
    with pytest.raises(SystemExit):
        main(args)
    assert not metrics.exists() and not list(metrics.parent.glob(".*tmp"))  # nothing half-written left behind
    monkeypatch.setattr(sampling_free.files.os, "replace", real_replace)
    assert main(args) == 0
    assert json.loads(metrics.read_text())["bbox"] == first
    assert (run / "model_final.pth").stat().st_mtime_ns == stamp
