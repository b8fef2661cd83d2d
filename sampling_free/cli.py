"""The ``sampling-free`` command: train, eval, prior, data."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_ROOT / "quickstart" / "retinanet_mobilenet_v2_shapes.yaml"
logger = logging.getLogger("sampling_free")


def find_config(name: str | None) -> Path:
    """A config file by path, or by its name inside the packaged ``configs/`` (``retinanet/retinanet_R_50_FPN_1x``)."""
    if name is None:
        return DEFAULT_CONFIG
    path = Path(name)
    for candidate in (path, CONFIG_ROOT / path, CONFIG_ROOT / path.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"error: config file {name!r} not found (looked in the current folder and {CONFIG_ROOT})")


def _load(args):
    from .config import load_config

    path = find_config(args.config_file)
    return load_config(path, args.opts), path


def cmd_train(args) -> int:
    from .engine.trainer import train

    cfg, path = _load(args)
    train(cfg, config_file=str(path), evaluate=not args.skip_test)
    return 0


def _split_trailing_overrides(values: list[str], opts: list[str]) -> tuple[list[str], list[str]]:
    """``--weights a.pth b.pth SOLVER.X 1``: argparse gives all four to --weights; the first config key (an
    upper-case dotted name) starts the overrides."""
    for i, v in enumerate(values):
        if re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*", v):
            return values[:i], values[i:] + list(opts)
    return values, list(opts)


def cmd_eval(args) -> int:
    from .config import load_config
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

    if args.name != "shapes":
        raise SystemExit(f"error: unknown built-in dataset {args.name!r} (only 'shapes')")
    splits = {"train": args.train_images, "val": args.val_images}
    out = shapes.write_dataset(args.out, seed=args.seed, splits=splits, layout=args.format)
    for split in splits:
        if args.format == "voc":
            print(f"voc:{out.resolve()}:{split}")
        else:
            print(f"{out / 'annotations' / f'instances_{split}.json'}  {out / split}")
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
    p.add_argument("name", choices=["shapes"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, default=1200)
    p.add_argument("--val-images", type=int, default=300)
    p.add_argument("--format", choices=["coco", "voc"], default="coco",
                   help="COCO JSON + image folders, or the PASCAL VOC devkit layout (XML, ImageSets/Main)")
    p.set_defaults(func=cmd_data)
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
