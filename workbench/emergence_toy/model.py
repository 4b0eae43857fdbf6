"""The toy model of Zucchet et al., "The emergence of sparse attention" (arXiv 2505.17863):
``y = W sum_t softmax(a)_t x_t``, a free attention vector ``a`` over the positions and a linear map
``W``, both starting at 0 (the zero predictor, loss 0.5 on the single-location task).

It reads the single-location task with the relevant token at the last position
(``SingleLocationRegression(position="last")``; with in-context repetition B the copies fill the
last B positions): a free vector over positions can only learn where a fixed position is.

``repeat_logits`` says how the B copies of the relevant token are attended:

* ``"free"``: every position has its own logit (``a [T]``), the model as written;
* ``"shared"``: the B copies share one logit (``a [T - B + 1]``, the last entry used B times), so
  attention sees them as one token of B times the weight: the picture behind the paper's statement
  that repetition B acts as a sequence B times shorter (``T -> T / B``). In a Transformer the copies
  share their logit through the shared query and key weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from toy_tasks.base import TORCH_SEED_MAX, ToyTask, check_int
from toy_tasks.emergence import SingleLocationRegression
from workbench.model_config import check_known_fields

ARCHITECTURE = "emergence_toy"
REPEAT_LOGITS = ("free", "shared")


@dataclass(frozen=True)
class EmergenceToyConfig:
    """The toy model as a `workbench.train.TrainConfig` model (``model: {architecture:
    emergence_toy}`` in a spec).

    Attributes:
        architecture: ``"emergence_toy"`` (names the model in a config dict).
        repeat_logits: ``"free"`` (a logit per position) or ``"shared"`` (one logit for the B
            copies of the relevant token); see the module docstring.
        seed: kept for the training config's interface (``W`` and ``a`` start at 0: nothing is
            drawn).
    """

    architecture: Literal["emergence_toy"] = ARCHITECTURE
    repeat_logits: Literal["free", "shared"] = "free"
    seed: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.architecture != ARCHITECTURE:
            raise ValueError(f"architecture must be {ARCHITECTURE!r}, got {self.architecture!r}")
        if self.repeat_logits not in REPEAT_LOGITS:
            raise ValueError(
                f"repeat_logits must be one of {REPEAT_LOGITS}, got {self.repeat_logits!r}"
            )
        if self.seed is not None:
            check_int("seed", self.seed, 0, TORCH_SEED_MAX)

    def replace(self, **changes: Any) -> EmergenceToyConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmergenceToyConfig:
        check_known_fields(cls, data, "model")
        return cls(**data)


class EmergenceToy(nn.Module):
    """``forward(inputs [batch, T, d]) -> [batch, T, d]``: every position outputs
    ``W @ sum_t softmax(a)_t x_t`` (the single-location task scores the last one).

    Parameters: ``W [d_output, d_input]`` and ``logits`` ``[T]`` (free) or ``[T - B + 1]``
    (shared), both 0 at initialisation.
    """

    def __init__(self, seq_len: int, d_input: int, d_output: int, shared_copies: int = 1) -> None:
        super().__init__()
        check_int("shared_copies", shared_copies, 1, seq_len)
        self.seq_len, self.shared_copies = seq_len, shared_copies
        self.W = nn.Parameter(torch.zeros(d_output, d_input))
        self.logits = nn.Parameter(torch.zeros(seq_len - shared_copies + 1))

    def attention_logits(self) -> torch.Tensor:
        """``a [T]``: the last ``shared_copies`` positions take the last logit."""
        copies = self.shared_copies
        return torch.cat([self.logits[:-1], self.logits[-1:].expand(copies)])

    def attention(self) -> torch.Tensor:
        """``softmax(a) [T]``."""
        return torch.softmax(self.attention_logits(), dim=0)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != 3 or inputs.shape[1:] != (self.seq_len, self.W.shape[1]):
            raise ValueError(
                f"expected inputs [batch, {self.seq_len}, {self.W.shape[1]}], "
                f"got {tuple(inputs.shape)}"
            )
        pooled = torch.einsum("t,btd->bd", self.attention(), inputs.to(self.W.dtype))
        return (pooled @ self.W.T)[:, None, :].expand(-1, self.seq_len, -1)


def check_task(task: ToyTask) -> SingleLocationRegression:
    """``task`` if the toy model can read it (single-location, relevant copies at the end), else
    ``ValueError`` naming ``task`` or ``position``."""
    if not isinstance(task, SingleLocationRegression):
        raise ValueError(
            f"the emergence toy model reads the single_location task, got task {task.name!r}"
        )
    if task.position != "last":
        raise ValueError(
            "the emergence toy model's attention is a free vector over positions: it needs "
            f"position 'last' (a fixed relevant position), got position {task.position!r}"
        )
    return task


def build_emergence_toy(task: ToyTask, config: EmergenceToyConfig) -> EmergenceToy:
    """The toy model for ``task`` (validated by `check_task`), in train mode."""
    task = check_task(task)
    shared = task.burstiness if config.repeat_logits == "shared" else 1
    return EmergenceToy(task.seq_len, task.d_input, task.d_output, shared).train()
