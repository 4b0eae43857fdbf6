"""Where harvested activations come from: a toy task's batches or a text file for a Hugging Face
model. Each source yields ``(inputs, keep)`` (the model's inputs and the ``[batch, pos]`` positions
whose rows to keep) and can draw any example again by its index (for attribution and rendering)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from toy_tasks.base import NO_POSITION, Batch, ToyTask, check_int, token_name


class Source(Protocol):
    """What `workbench.sae.pipeline` harvests from."""

    def batches(self, device: torch.device | str = "cpu") -> Iterator[tuple[Any, torch.Tensor]]:
        """``(inputs, keep)``: the model's inputs and the ``[batch, pos]`` rows to keep."""
        ...

    def n_batches(self) -> int: ...

    def n_rows(self) -> int:
        """How many rows `batches` keeps (an estimate where it cannot be known in advance)."""
        ...

    def tokens(self, example: int) -> list[str]:
        """The token strings of example ``example``."""
        ...

    def variables(self, where: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latent variables ``name -> [n]`` at the rows ``where`` ``[n, 2]`` (example, position)."""
        ...

    def describe(self) -> dict[str, Any]: ...


EXAMPLE_SEED_STRIDE = 2**20
"""Batch ``j`` of a `TaskSource` is drawn with seed ``seed * EXAMPLE_SEED_STRIDE + j``."""
MAX_SOURCE_SEED = 2**42
"""Largest `TaskSource` seed (its batch seeds stay below 2**63)."""


@dataclass(frozen=True)
class TaskSource:
    """``n_examples`` examples of a toy task in batches of ``batch_size`` (batch ``j`` drawn from
    its own seed, so any example can be drawn again); rows at the scored positions
    (``positions="scored"``) or at every position."""

    task: ToyTask
    n_examples: int
    batch_size: int = 256
    seed: int = 0
    positions: Literal["scored", "all"] = "scored"

    def __post_init__(self) -> None:
        for name, low, high in (
            ("n_examples", 1, None),
            ("batch_size", 1, None),
            ("seed", 0, MAX_SOURCE_SEED),
        ):
            check_int(name, getattr(self, name), low, high)
        if self.positions not in ("scored", "all"):
            raise ValueError(f"positions must be 'scored' or 'all', got {self.positions!r}")

    def batch(self, index: int) -> Batch:
        """Batch ``index`` (examples ``index * batch_size`` on)."""
        size = min(self.batch_size, self.n_examples - index * self.batch_size)
        generator = torch.Generator().manual_seed(self.seed * EXAMPLE_SEED_STRIDE + index)
        return self.task.sample(size, generator)

    def n_batches(self) -> int:
        return -(-self.n_examples // self.batch_size)

    def batches(self, device: torch.device | str = "cpu") -> Iterator[tuple[Any, torch.Tensor]]:
        for index in range(self.n_batches()):
            batch = self.batch(index).to(device)
            yield batch.inputs, self.keep(batch)

    def keep(self, batch: Batch) -> torch.Tensor:
        """``[batch, pos]``: the rows harvested from ``batch``."""
        return batch.loss_mask if self.positions == "scored" else torch.ones_like(batch.loss_mask)

    def n_rows(self) -> int:
        """Rows per example of the first batch times the examples."""
        first = self.batch(0)
        return round(self.keep(first).sum().item() / first.batch_size * self.n_examples)

    def tokens(self, example: int) -> list[str]:
        """Input tokens of ``example`` named as the task names them (``K3``, ``V17``, ...), the
        position for continuous inputs."""
        inputs = self.examples(torch.tensor([example])).inputs[0]
        if self.task.kind != "tokens":
            return [f"x{position}" for position in range(inputs.shape[0])]
        return [token_name(self.task, token) for token in inputs.tolist()]

    def variables(self, where: torch.Tensor) -> dict[str, torch.Tensor]:
        """At token tasks' rows: ``target`` (the token to output there), ``query`` (the input token
        there) and, where each row reads one position, ``source`` (that position); none for
        continuous tasks."""
        if self.task.kind != "tokens":
            return {}
        examples, local = where[:, 0].unique(return_inverse=True)
        batch = self.examples(examples)
        rows = (local, where[:, 1])
        found = {"target": batch.targets[rows], "query": batch.inputs[rows]}
        relevant = batch.relevant_positions[rows]  # [n, R]
        if ((relevant != NO_POSITION).sum(-1) == 1).all():
            found["source"] = relevant.max(-1).values
        return found

    def examples(self, indices: torch.Tensor) -> Batch:
        """The examples of the given indices ``[n]``, drawn again (in that order)."""
        wanted = indices.tolist()
        drawn = {j: self.batch(j) for j in sorted({i // self.batch_size for i in wanted})}
        parts = [
            drawn[i // self.batch_size].take(torch.tensor([i % self.batch_size])) for i in wanted
        ]
        return Batch(
            inputs=torch.cat([part.inputs for part in parts]),
            targets=torch.cat([part.targets for part in parts]),
            loss_mask=torch.cat([part.loss_mask for part in parts]),
            relevant_positions=torch.cat([part.relevant_positions for part in parts]),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "task",
            "task": self.task.to_dict(),
            "n_examples": self.n_examples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "positions": self.positions,
        }


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (``[CLS]`` and ``[SEP]`` for BERT)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
    return full[:start], full[start + len(bare) :]


@dataclass(frozen=True)
class TextSource:
    """A UTF-8 text file cut into windows of ``window`` tokens (the tokenizer's, special tokens
    included) for a Hugging Face model, ``batch_size`` windows a batch; rows at every real token.
    Only windows ``start`` to ``stop`` (None: the last) are used, so one file gives a training and
    a held-out part."""

    path: Path
    tokenizer: Any = field(repr=False)
    window: int = 128
    batch_size: int = 16
    start: int = 0
    stop: int | None = None

    def __post_init__(self) -> None:
        if not Path(self.path).is_file():
            raise ValueError(f"path must be a text file, got {self.path!r}")
        for name, low in (("window", 4), ("batch_size", 1), ("start", 0), ("stop", 1)):
            value = getattr(self, name)
            if value is None and name == "stop":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    @cached_property
    def windows(self) -> list[list[int]]:
        """Token ids of every window (the last one may be shorter)."""
        text = Path(self.path).read_text(encoding="utf-8")
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        prefix, suffix = special_tokens(self.tokenizer)
        inner = self.window - len(prefix) - len(suffix)
        if inner < 1:
            raise ValueError(
                f"window must exceed the tokenizer's {self.window - inner} special tokens"
            )
        windows = [
            [*prefix, *ids[start : start + inner], *suffix]
            for start in range(0, max(len(ids), 1), inner)
        ]
        return windows[self.start : self.stop]

    def n_batches(self) -> int:
        return -(-len(self.windows) // self.batch_size)

    def n_rows(self) -> int:
        return sum(len(window) for window in self.windows)

    def batches(self, device: torch.device | str = "cpu") -> Iterator[tuple[Any, torch.Tensor]]:
        for start in range(0, len(self.windows), self.batch_size):
            part = self.windows[start : start + self.batch_size]
            inputs = self.tokenizer.pad({"input_ids": part}, return_tensors="pt")
            inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
            yield inputs, inputs["attention_mask"].bool()

    def tokens(self, example: int) -> list[str]:
        """The token strings of window ``example``."""
        return self.tokenizer.convert_ids_to_tokens(self.windows[example])

    def variables(self, where: torch.Tensor) -> dict[str, torch.Tensor]:
        """``token`` (the token at the row) and ``previous`` (the one before; -1 at the start)."""
        ids = [self.windows[example] for example in where[:, 0].tolist()]
        positions = where[:, 1].tolist()
        return {
            "token": torch.tensor([w[p] for w, p in zip(ids, positions, strict=True)]),
            "previous": torch.tensor(
                [w[p - 1] if p else -1 for w, p in zip(ids, positions, strict=True)]
            ),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "text",
            "path": str(self.path),
            "window": self.window,
            "start": self.start,
            "stop": self.stop,
            "windows": len(self.windows),
        }
