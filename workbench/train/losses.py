"""The training loss and the task metric of a toy task's outputs."""

from __future__ import annotations

import torch
from torch import nn

import toy_tasks
from toy_tasks.base import Batch, ToyTask
from toy_tasks.classification import sequence_labels


def task_loss(task: ToyTask, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Scalar loss of ``outputs`` (logits ``[batch, seq, vocab]``, vectors ``[batch, seq,
    d_output]`` or class logits ``[batch, n_classes]``) on the scored positions of ``batch``,
    computed in float32."""
    outputs = outputs.float()
    if task.kind == "classification":
        return nn.functional.cross_entropy(outputs, sequence_labels(batch))
    if task.kind == "tokens":
        return nn.functional.cross_entropy(
            outputs.flatten(0, 1), batch.targets.flatten(), ignore_index=toy_tasks.IGNORE_INDEX
        )
    squared = (outputs - batch.targets).square().sum(dim=-1)  # [batch, seq]
    # A masked sum, not squared[mask]: boolean indexing waits for the GPU (its size is data).
    return 0.5 * torch.where(batch.loss_mask, squared, 0.0).sum() / batch.loss_mask.sum()


def task_metrics(task: ToyTask, outputs: torch.Tensor, batch: Batch) -> dict[str, float]:
    """``eval_accuracy`` (token and classification tasks) or ``eval_mse`` (continuous tasks, per
    output dimension)."""
    if task.kind == "classification":
        correct = outputs.argmax(dim=-1) == sequence_labels(batch)  # [batch]
        return {"eval_accuracy": correct.float().mean().item()}
    mask = batch.loss_mask
    if task.kind == "tokens":
        correct = outputs.argmax(dim=-1) == batch.targets  # [batch, seq]
        return {"eval_accuracy": correct[mask].float().mean().item()}
    squared = (outputs.float() - batch.targets).square().sum(dim=-1)  # [batch, seq]
    return {"eval_mse": (squared[mask].mean() / task.d_output).item()}
