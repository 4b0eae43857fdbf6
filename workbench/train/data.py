"""Where training batches come from: fresh samples every step, or shuffled epochs over a fixed set."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch

from toy_tasks.base import Batch, ToyTask
from workbench.train.config import TrainConfig


def stream_seed(seed: int, stream: str, index: int = 0) -> int:
    """The seed of one random stream of a run: a 32-bit hash of the run's ``seed``, the stream's
    name and an ``index`` (an epoch, a step).

    CPU ``torch.Generator`` s (Mersenne Twister) use only the low 32 bits of a seed, so streams
    told apart by offsets of ``2**32`` or more draw the same numbers; hashed seeds are distinct
    streams whatever the run's seed. Training batches keep the run's ``seed`` itself."""
    digest = hashlib.sha256(f"{stream}/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def evaluation_generator(config: TrainConfig) -> torch.Generator:
    """The generator of the run's fixed evaluation batch (stream ``"evaluation"``)."""
    return torch.Generator().manual_seed(stream_seed(config.seed, "evaluation"))


@contextlib.contextmanager
def forward_random_state(
    config: TrainConfig, step: int, device: torch.device, *, evaluation: bool = False
) -> Iterator[None]:
    """Inside the block, torch's default generators of the CPU and of ``device`` are seeded from
    ``config.seed`` and ``step`` (`stream_seed`, stream ``"forward"`` or, with ``evaluation``,
    ``"evaluation forward"``); outside they are as they were. What a forward draws (dropout,
    `workbench.sparse` methods that draw keys) is then a function of the run's seed and the step:
    the same in a resumed run as in an uninterrupted one."""
    seed = stream_seed(config.seed, "evaluation forward" if evaluation else "forward", step)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.default_generators[device.index or 0].manual_seed(seed)
        yield


def evaluation_batch(config: TrainConfig) -> Batch:
    """The run's fixed evaluation batch (``eval_batch_size`` examples drawn from
    `evaluation_generator`), on the CPU: every evaluation, and the final trace of its first
    examples, read these."""
    return config.eval_task().sample(config.eval_batch_size, evaluation_generator(config))


class TrainingData:
    """Where training batches come from: a fresh sample from the training generator every step
    (of the curriculum's task at that step, with a ``curriculum``), or (``train_samples``)
    shuffled epochs over a fixed set kept on the device."""

    def __init__(self, task: ToyTask, config: TrainConfig, device: torch.device) -> None:
        self.task, self.config, self.device = task, config, device
        self.fixed: Batch | None = None
        if config.train_samples is not None:
            generator = torch.Generator().manual_seed(stream_seed(config.seed, "training set"))
            self.fixed = task.sample(config.train_samples, generator).to(device)
            self.fixed_head = self.fixed.head(config.eval_batch_size)
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
            seed = stream_seed(self.config.seed, "epoch", epoch)
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
