"""A finished training run loaded for the RPN analyses (rpn_proposals.py, rpn_levels.py, rpn_gradient.py)."""
from __future__ import annotations

from sampling_free.config import load_config
from sampling_free.data.build import build_datasets
from sampling_free.engine.checkpoint import load_checkpoint
from sampling_free.modeling import build_model


def load_trained_run(run: str):
    """(config, model, training dataset) of ``run``: its config without flips, its final weights, the model in training
    mode (training-time proposal counts and NMS)."""
    cfg = load_config(f"{run}/config.yaml", values={"INPUT.HFLIP_PROB": 0.0})
    dataset = build_datasets(cfg.DATASETS.TRAIN, cfg, training=True)[0]
    model = build_model(cfg, dataset.num_classes)
    model.load_state_dict(load_checkpoint(f"{run}/model_final.pth")["model"])
    return cfg, model.train(), dataset
