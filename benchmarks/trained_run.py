"""A finished training run loaded for the analyses (rpn_proposals.py, rpn_levels.py, rpn_gradient.py, retina_levels.py)."""
from __future__ import annotations

from sampling_free.config import load_config
from sampling_free.data.build import build_datasets
from sampling_free.checkpoint import load_checkpoint, load_whole
from sampling_free.modeling import build_model


def load_trained_run(run: str, *, split: str = "train", weights: str = "model_final.pth"):
    """(config, model, dataset) of ``run``: its config without flips, its final weights. ``split="train"``: the first
    training set, the model in training mode (training-time proposal counts and NMS); ``"test"``: the first test set,
    the model in eval mode. ``weights``: another checkpoint of the run (``model_0000100.pth``)."""
    cfg = load_config(f"{run}/config.yaml", values={"INPUT.HFLIP_PROB": 0.0})
    training = split == "train"
    names = cfg.DATASETS.TRAIN if training else cfg.DATASETS.TEST
    dataset = build_datasets(names, cfg, training=training)[0]
    model = build_model(cfg, dataset.num_classes)
    load_whole(model, load_checkpoint(f"{run}/{weights}")["model"], f"{run}/{weights}")
    return cfg, model.train(training), dataset
