"""Optimizer and learning-rate schedule (maskrcnn-benchmark's: bias LR x2 without weight decay, linear warm-up)."""
from __future__ import annotations

import bisect
import math

import torch


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    s = cfg.SOLVER
    groups = {"weights": [], "biases": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["biases" if name.endswith(".bias") else "weights"].append(param)
    params = [
        {"params": groups["weights"], "lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY},
        {"params": groups["biases"], "lr": s.BASE_LR * s.BIAS_LR_FACTOR, "weight_decay": s.WEIGHT_DECAY_BIAS},
    ]
    if s.OPTIMIZER == "AdamW":
        return torch.optim.AdamW(params, lr=s.BASE_LR)
    return torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM)


def lr_factor(cfg, iteration: int) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based)."""
    s = cfg.SOLVER
    if s.LR_SCHEDULER == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * min(iteration, s.MAX_ITER) / max(1, s.MAX_ITER)))
    else:
        factor = s.GAMMA ** bisect.bisect_right(sorted(s.STEPS), iteration)
    if iteration < s.WARMUP_ITERS:
        alpha = iteration / s.WARMUP_ITERS
        factor *= s.WARMUP_FACTOR * (1 - alpha) + alpha
    return factor


def build_scheduler(cfg, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it))
