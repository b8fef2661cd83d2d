"""The ``sampling-free`` command: train, eval, prior, data, demo, predict, export, compare, plot."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from .config import find_config, load_config

logger = logging.getLogger("sampling_free")


def _load(args):
    path = find_config(args.config_file)
    return load_config(path, args.opts), path


def cmd_train(args) -> int:
    from .engine.trainer import run_training

    cfg, path = _load(args)
    run_training(cfg, config_file=str(path), evaluate=not args.skip_test)
    return 0


def _split_trailing_overrides(values: list[str], opts: list[str]) -> tuple[list[str], list[str]]:
    """``--weights a.pth b.pth SOLVER.X 1``: argparse gives all four to --weights; the first config key (an
    upper-case dotted name, or compare's variant:KEY) starts the overrides."""
    for i, v in enumerate(values):
        if re.fullmatch(r"([a-z_]+:)?[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*", v):
            return values[:i], values[i:] + list(opts)
    return values, list(opts)


def cmd_eval(args) -> int:
    from .engine.evaluator import evaluate_weights
    from .engine.runtime import resolve_device, setup_logging
    from .engine.trainer import default_output_dir

    if args.weights:
        args.weights, args.opts = _split_trailing_overrides(args.weights, args.opts)
    else:
        args.iters, args.opts = _split_trailing_overrides(args.iters, args.opts)
    if args.config_file is None and args.weights:
        run_config = Path(args.weights[0]).parent / "config.yaml"
        if not run_config.is_file():
            raise SystemExit(f"error: give --config-file ({run_config} does not exist)")
        cfg, path = load_config(run_config, args.opts), run_config
    else:
        cfg, path = _load(args)
    out_dir = default_output_dir(cfg, str(path))
    if args.weights:
        weights = [Path(w) for w in args.weights]
        if not cfg.OUTPUT_DIR and args.config_file is None:
            out_dir = weights[0].parent
    else:
        weights = [out_dir / (f"model_{int(i):07d}.pth" if i != "final" else "model_final.pth") for i in args.iters]
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir)
    evaluate_weights(cfg, weights, out_dir, resolve_device(cfg.MODEL.DEVICE))
    return 0


def cmd_prior(args) -> int:
    from .data.build import build_datasets
    from .engine.runtime import setup_logging
    from .engine.trainer import prepare_model

    setup_logging()
    cfg, _ = _load(args)
    datasets = build_datasets(cfg.DATASETS.TRAIN, cfg, training=True)
    _, prior = prepare_model(cfg, datasets, None)
    shown = {k: v for k, v in prior.items() if k != "depends_on"}
    print(json.dumps(shown, indent=2))
    return 0


def cmd_data(args) -> int:
    from .data import shapes

    profile = "shapes" if args.name == "shapes" else args.name[len("shapes_"):]
    defaults = dict(shapes.PROFILES[profile].splits)
    splits = {**defaults, "train": args.train_images or defaults["train"], "val": args.val_images or defaults["val"]}
    out = shapes.write_dataset(args.out, seed=args.seed, splits=splits, layout=args.format, profile=profile)
    for split in splits:
        if args.format == "voc":
            print(f"voc:{out.resolve()}:{split}")
        else:
            print(f"{out / 'annotations' / f'instances_{split}.json'}  {out / split}")
    return 0


def _detector(args, device: str | None):
    """The trained model of ``--weights``, built with ``--config-file`` or its run folder's ``config.yaml``."""
    from .api import Detector

    config = Path(args.weights).parent / "config.yaml" if args.config_file is None else find_config(args.config_file)
    if not config.is_file():
        raise SystemExit(f"error: give --config-file ({config} does not exist)")
    cfg = load_config(config)
    try:
        return Detector.from_checkpoint(args.weights, config=cfg, device=device or cfg.MODEL.DEVICE)
    except (ValueError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None


def cmd_demo(args) -> int:
    from .engine.runtime import setup_logging
    from .visualize import run_demo

    setup_logging()
    written = run_demo(_detector(args, args.device), args.inputs, args.out, score_threshold=args.score_threshold)
    print(f"{len(written)} image(s) drawn in {args.out}")
    return 0


def cmd_predict(args) -> int:
    from .engine.runtime import setup_logging
    from .predict import predict_to_coco
    from .files import write_json_atomic

    setup_logging()
    detector = _detector(args, args.device)
    records = predict_to_coco(detector, args.inputs, score_threshold=args.score_threshold)
    write_json_atomic(Path(args.out), records)
    images = len({r["image_id"] for r in records})
    print(f"{args.out}: {len(records)} detections on {images} image(s) with any (COCO results format)")
    return 0


EXPORT_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}


def export_format(out: str, given: str | None) -> str:
    """``--format``, or the format the output file's suffix names."""
    if given:
        return given
    suffix = Path(out).suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise SystemExit(f"error: cannot tell the format from {out!r}; name it .onnx, .pt or .ts, or give --format "
                         f"onnx|torchscript")
    return EXPORT_SUFFIXES[suffix]


def cmd_export(args) -> int:
    from .api import image_files, load_image
    from .engine.runtime import setup_logging
    from .export import BOX_TOL, MASK_TOL, SCORE_TOL, describe, export_and_check, sample_images

    args.format = export_format(args.out, args.format)
    setup_logging()
    detector = _detector(args, "cpu")
    size = tuple(args.image_size or (detector.cfg.INPUT.MIN_SIZE_TEST,) * 2)
    if args.check:
        files = image_files(args.check)
        images, names = [load_image(f) for f in files], [str(f) for f in files]
    else:
        images = sample_images()
        names = [f"shapes sample {k}" for k in range(len(images))]
    try:
        info, reports = export_and_check(detector.model, fmt=args.format, out=args.out, image_size=size,
                                         images=images, class_names=detector.class_names)
    except ModuleNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    how = "scripted (any image size)" if info["method"] == "script" else \
        f"traced: takes only {size[0]}x{size[1]} images"
    if "script_failure" in info:
        how += f" (torch.jit.script failed: {info['script_failure']})"
    print(f"{args.out}: {info['detector']} as {args.format}, {how}")
    if "caveat" in info:
        print(f"caveat: {info['caveat']}")
    if reports is None:
        print("onnxruntime is not installed: the ONNX file is written but NOT checked "
              "(pip install 'sampling-free[export]' and export again to check it)")
        return 0
    for name, report in zip(names, reports):
        print(describe(name, report))
    agree = sum(r["ok"] for r in reports)
    print(f"agreement: {agree}/{len(reports)} images within tolerance (same labels, boxes within {BOX_TOL} px, "
          f"scores within {SCORE_TOL:g}" + (f", mask probabilities within {MASK_TOL}" if "masks" in info["outputs"]
                                             else "") + "); the first image was the trace example")
    return 0 if agree == len(reports) else 1


def cmd_compare(args) -> int:
    from .compare import compare
    from .engine.runtime import setup_logging

    args.variants, args.opts = _split_trailing_overrides(args.variants, args.opts)
    seeds, args.opts = _split_trailing_overrides(args.seeds, args.opts)  # --seeds 0 1 2 SOLVER.MAX_ITER 100
    try:
        args.seeds = [int(s) for s in seeds]
    except ValueError:
        raise SystemExit(f"error: --seeds takes whole numbers, got {seeds}") from None
    path = find_config(args.config_file)
    out = Path(args.out or Path("output") / "compare" / path.stem)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging()
    compare(path, args.opts, seeds=args.seeds, variants=args.variants, out_dir=out, records_dir=args.records)
    print(f"written: {out}/comparison.md, comparison.json, comparison_ap.png, comparison_loss.png")
    return 0


def cmd_plot(args) -> int:
    from .plot import plot_runs

    keys = tuple(args.keys)
    out = plot_runs(args.runs, args.out, keys=keys)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sampling-free", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p, required=False):
        p.add_argument("--config-file", required=required, metavar="FILE",
                       help="YAML config (a path, or a name under the packaged configs/)")
        p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                       help="config overrides, e.g. SOLVER.MAX_ITER 100 MODEL.SAMPLING_FREE_ON True")

    p = sub.add_parser("train", help="train (and evaluate) a detector; default: the CPU quickstart")
    p.add_argument("--skip-test", action="store_true", help="do not evaluate on DATASETS.TEST at the end")
    with_config(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate checkpoints on DATASETS.TEST")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--weights", nargs="+", metavar="W", help="checkpoint files")
    group.add_argument("--iters", nargs="+", metavar="ITER", help="iterations in OUTPUT_DIR (0060000) or 'final'")
    with_config(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prior", help="estimate π for a config and print it with the bias and threshold")
    with_config(p)
    p.set_defaults(func=cmd_prior)

    p = sub.add_parser("data", help="write a built-in dataset to disk")
    p.add_argument("name", choices=["shapes", "shapes_dense"],
                   help="shapes: 1-10 objects per image, 8 px to most of the image; shapes_dense: dozens of small "
                        "objects (6-32 px) per 256-320 px image")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, help="default: 1200 (shapes), 600 (shapes_dense)")
    p.add_argument("--val-images", type=int, help="default: 300 (shapes), 150 (shapes_dense)")
    p.add_argument("--format", choices=["coco", "voc"], default="coco",
                   help="COCO JSON + image folders, or the PASCAL VOC devkit layout (XML, ImageSets/Main)")
    p.set_defaults(func=cmd_data)

    def on_images(name, help):
        """A command that runs a trained model on images: its inputs, weights and config."""
        p = sub.add_parser(name, help=help)
        p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of images")
        p.add_argument("--weights", required=True, metavar="W", help="checkpoint file")
        p.add_argument("--config-file", metavar="FILE",
                       help="YAML config the weights were trained with (default: config.yaml next to the weights)")
        p.add_argument("--device", help="torch device (default: the config's MODEL.DEVICE)")
        return p

    p = on_images("demo", "draw a trained model's detections on images (one PNG each)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs")
    p.add_argument("--score-threshold", type=float, default=0.3, metavar="T",
                   help="draw detections scoring at least T (default 0.3). The model itself keeps far weaker ones "
                        "(score > 0.05, or > π·C when sampling-free, often below 0.01): AP rewards every extra true "
                        "positive ranked below the confident ones, a picture would drown in them")
    p.set_defaults(func=cmd_demo)

    p = on_images("predict", "a trained model's detections on images, as COCO results JSON")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="JSON file: a list of {image_id, file_name, category_id, category_name, bbox [x, y, w, h], "
                        "score} (and segmentation, RLE, for mask models)")
    p.add_argument("--score-threshold", type=float, default=0.0, metavar="T",
                   help="keep detections scoring at least T (default 0: everything the model keeps, down to its own "
                        "test threshold, as COCO evaluation wants them)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a trained model (TorchScript or ONNX) and check it against the eager one")
    p.add_argument("--weights", required=True, metavar="W", help="checkpoint file")
    p.add_argument("--config-file", metavar="FILE",
                   help="YAML config the weights were trained with (default: config.yaml next to the weights)")
    p.add_argument("--format", choices=["torchscript", "onnx"],
                   help="default: from the suffix of --out (.onnx; .pt or .ts for TorchScript)")
    p.add_argument("--out", required=True, metavar="FILE", help="exported file (a .json sidecar is written beside)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="the fixed input size of a traced export (default: INPUT.MIN_SIZE_TEST square)")
    p.add_argument("--check", nargs="+", metavar="IMAGE",
                   help="images (or folders) to compare exported and eager detections on; the first is also the "
                        "trace example (default: 3 images of the built-in shapes dataset)")
    p.set_defaults(func=cmd_export)

    from .compare import ABLATION, VARIANTS

    p = sub.add_parser("compare", help="train and evaluate the baseline, the ablation and sampling-free over seeds")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"], metavar="S")
    p.add_argument("--variants", nargs="+", default=list(ABLATION), metavar="V",
                   help=f"any of {', '.join(VARIANTS)} (default: all but ohem, which is for R-CNNs)")
    p.add_argument("--out", metavar="DIR", help="default: output/compare/<config name>")
    p.add_argument("--records", metavar="DIR",
                   help="also write one JSON record per run under DIR/<test split>/ (what tables are made from)")
    with_config(p)
    p.epilog = ("A KEY written variant:KEY applies to that variant alone, e.g. baseline:MODEL.RETINANET.FOCAL_LOSS_GAMMA "
                "1.0 sampling_free:MODEL.CLASSIFICATION_SCALE 2.0")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("plot", help="loss curves (and AP over checkpoints) of run folders, overlaid, to a PNG")
    p.add_argument("runs", nargs="+", metavar="OUTPUT_DIR")
    p.add_argument("--out", default="curves.png", metavar="FILE")
    p.add_argument("--keys", nargs="+", default=["loss"], metavar="KEY",
                   help="metrics.jsonl fields to draw (default: loss)")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, FloatingPointError, RuntimeError) as exc:
        # bad input (config, data, weights, paths, device): the message names the file and the problem
        if os.environ.get("SAMPLING_FREE_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
