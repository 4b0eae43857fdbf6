"""Optimisers and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from workbench.train.config import TrainConfig


def learning_rate(config: TrainConfig, index: int) -> float:
    """Learning rate of update ``index`` (0-based): warm-up, then the schedule."""
    if index < config.warmup_steps:
        return config.lr * (index + 1) / config.warmup_steps
    after = index - config.warmup_steps
    if config.schedule == "cosine":
        total = max(config.steps - config.warmup_steps, 1)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(after / total, 1.0)))
    if config.schedule == "step":
        return config.lr * config.gamma ** (after // config.step_every)
    return config.lr


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters (fixed sinusoidal positions are buffers)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)
