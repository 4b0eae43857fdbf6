"""Where training batches come from: fresh samples every step, or shuffled epochs over a fixed set."""

from __future__ import annotations

import torch

from toy_tasks.base import Batch, ToyTask
from workbench.train.config import TrainConfig

EVAL_SEED_OFFSET = 2**32
"""The evaluation generator is seeded with ``seed + EVAL_SEED_OFFSET`` (disjoint from training)."""
TRAIN_SET_SEED_OFFSET = 2**33
"""A fixed training set (``train_samples``) is drawn with seed ``seed + TRAIN_SET_SEED_OFFSET``."""
EPOCH_SEED_BASE = 2**60
"""Epoch ``e`` of a fixed training set is shuffled with seed ``EPOCH_SEED_BASE + seed * 2**24 + e``
(a function of the step: resuming needs no shuffling state)."""


class TrainingData:
    """Where training batches come from: a fresh sample from the training generator every step
    (of the curriculum's task at that step, with a ``curriculum``), or (``train_samples``)
    shuffled epochs over a fixed set kept on the device."""

    def __init__(self, task: ToyTask, config: TrainConfig, device: torch.device) -> None:
        self.task, self.config, self.device = task, config, device
        self.fixed: Batch | None = None
        if config.train_samples is not None:
            generator = torch.Generator().manual_seed(config.seed + TRAIN_SET_SEED_OFFSET)
            self.fixed = task.sample(config.train_samples, generator).to(device)
            count = min(config.eval_batch_size, config.train_samples)
            self.fixed_head = self.fixed.take(torch.arange(count, device=device))
            self.steps_per_epoch = config.train_samples // config.batch_size
            self._epoch, self._order = -1, torch.empty(0)

    def batch(self, step: int, generator: torch.Generator) -> Batch:
        """The batch of optimisation step ``step`` (0-based)."""
        size = self.config.batch_size
        if self.fixed is None:
            task = self.task_at(step)
            return task.sample(size, generator).to(self.device, non_blocking=True)
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            seed = EPOCH_SEED_BASE + self.config.seed * 2**24 + epoch
            order = torch.randperm(
                self.fixed.batch_size, generator=torch.Generator().manual_seed(seed)
            )
            self._epoch, self._order = epoch, order.to(self.device)
        return self.fixed.take(self._order[index * size : (index + 1) * size])

    def task_at(self, step: int) -> ToyTask:
        """The task sampled at optimisation step ``step`` (0-based): the curriculum's, else the
        run's task."""
        curriculum = self.config.curriculum
        return self.task if curriculum is None else curriculum.task_at(step, self.task)

    def curriculum_record(self, step: int) -> dict[str, int]:
        """``{"d_active", "n_points"}`` of step ``step``'s task with a curriculum, else empty."""
        if self.config.curriculum is None:
            return {}
        task = self.task_at(step)
        return {"d_active": task.active_dims, "n_points": task.n_points}
