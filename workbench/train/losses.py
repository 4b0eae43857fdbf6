"""The training loss and the task metric of a toy task's outputs."""

from __future__ import annotations

import torch
from torch import nn

import toy_tasks
from toy_tasks.base import Batch, ToyTask


def task_loss(task: ToyTask, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Scalar loss of ``outputs`` (logits ``[batch, seq, vocab]`` or vectors ``[batch, seq,
    d_output]``) on the scored positions of ``batch``, computed in float32."""
    outputs = outputs.float()
    if task.kind == "tokens":
        return nn.functional.cross_entropy(
            outputs.flatten(0, 1), batch.targets.flatten(), ignore_index=toy_tasks.IGNORE_INDEX
        )
    squared = (outputs - batch.targets).square().sum(dim=-1)  # [batch, seq]
    # A masked sum, not squared[mask]: boolean indexing waits for the GPU (its size is data).
    return 0.5 * torch.where(batch.loss_mask, squared, 0.0).sum() / batch.loss_mask.sum()


def task_metrics(task: ToyTask, outputs: torch.Tensor, batch: Batch) -> dict[str, float]:
    """``eval_accuracy`` (token tasks) or ``eval_mse`` (continuous tasks, per output dimension)."""
    mask = batch.loss_mask
    if task.kind == "tokens":
        correct = outputs.argmax(dim=-1) == batch.targets  # [batch, seq]
        return {"eval_accuracy": correct[mask].float().mean().item()}
    squared = (outputs.float() - batch.targets).square().sum(dim=-1)  # [batch, seq]
    return {"eval_mse": (squared[mask].mean() / task.d_output).item()}
