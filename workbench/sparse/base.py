"""The `SparseMethod` type: a selection (which keys each query may attend to) plus an optional
correction of the sparse output; or, for composite methods, several branches and their combination.

Every method is a frozen dataclass whose fields are its hyper-parameters (validated on
construction: a ``ValueError`` names the field and the allowed range) and whose class attributes
say what it is (``name``, ``description``, ``paper``, ``input_dependent``, and optionally
``needs_calibration`` and ``short_input_hyper_parameters``); the decorator
`workbench.sparse.registry.register_method` makes it known by its ``name``.

How a method attends (`SparseMethod.attend`, what `workbench.sparse.patch.sparsify` runs):
``branches`` (default: one, the ``select`` layout) each run through `kernels.api.sparse_attention`
(`workbench.sparse.branches`), then ``combine`` mixes their outputs (default: ``correct`` of the one
branch). A method may own learned parameters or a per-(layer, head) plan: ``state_module`` builds an
``nn.Module`` for one layer, which ``sparsify`` attaches to that layer's attention module (so it is
in ``state_dict``, in the optimiser, in checkpoints) and passes back as ``state``; without one the
method uses a freshly initialised state (``default_state``).

Shapes: ``q: [batch, heads, q_len, d_head]``, ``k, v: [batch, kv_heads, kv_len, d_head]`` with
``heads % kv_heads == 0``. Causal masks are end-aligned as in `kernels.layout` (key ``j`` is visible to
query ``i`` iff ``j <= i + kv_len - q_len``).
"""

from __future__ import annotations

import dataclasses
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from kernels.api import Impl
from kernels.layout import MAX_LEN, Layout, causal_token_mask
from kernels.reference import attention_mask, default_scale, scaled_scores
from toy_tasks.base import is_finite
from workbench.sparse.branches import (
    Branch,
    BranchOutput,
    coverage,
    run_branch,
    with_key_padding,
)
from workbench.sparse.padding import attend_examples, real_spans


@dataclasses.dataclass(frozen=True, eq=False)
class SparseMethod(ABC):
    """A named sparse-attention method (see the module docstring)."""

    name: ClassVar[str]
    description: ClassVar[str]
    paper: ClassVar[str]
    input_dependent: ClassVar[bool]
    needs_calibration: ClassVar[bool] = False
    """True when the method must be calibrated on a reference step before it can correct (then
    `workbench.sparse.patch.sparsify` cannot install it as it is)."""
    short_input_hyper_parameters: ClassVar[Mapping[str, Any]] = {}
    """Hyper-parameters for inputs of a few dozen tokens, where the defaults would keep every key
    (``workbench sparsify-eval`` starts from them)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # noqa: B027 (optional hook: methods without constraints)
        """Raise ``ValueError`` naming the first hyper-parameter out of its range."""

    @abstractmethod
    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        """The keys each query may attend to, as a `Layout` with ``block_q = block_k =
        block_size``. Input-agnostic methods use only the shapes and the device of ``q`` / ``k``."""

    def correct(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out_sparse: torch.Tensor,
        layout: Layout,
        *,
        causal: bool,
        scale: float | None = None,
    ) -> torch.Tensor:
        """Fix the sparse output ``[batch, heads, q_len, d_head]`` afterwards (default: as is)."""
        return out_sparse

    # ------------------------------------------------------------------ composite methods
    def state_module(self, *, layer: int, heads: int, d_head: int) -> nn.Module | None:
        """A fresh learned state (parameters, a per-head plan) for the attention of ``layer`` with
        ``heads`` sparse heads of ``d_head``; None: the method has none (the default)."""
        return None

    def default_state(self, q: torch.Tensor) -> nn.Module | None:
        """The state used when none is attached: a fresh `state_module` for ``q``'s heads (layer
        0), on ``q``'s device."""
        state = self.state_module(layer=0, heads=q.shape[1], d_head=q.shape[-1])
        return None if state is None else state.to(q.device)

    def branches(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
        state: nn.Module | None = None,
    ) -> list[Branch]:
        """The attentions the method runs (default: one, over ``select``'s layout)."""
        return [
            Branch(
                "selection", self.select(q, k, causal=causal, scale=scale, block_size=block_size)
            )
        ]

    def combine(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        branches: list[Branch],
        outputs: list[BranchOutput],
        *,
        causal: bool,
        scale: float | None = None,
        state: nn.Module | None = None,
        impl: Impl = "auto",
    ) -> torch.Tensor:
        """The output ``[batch, heads, q_len, d_head]`` from the branches' outputs (default: the one
        branch's, through `correct`); ``impl``: for attentions the combination runs itself."""
        (branch,), (output,) = branches, outputs
        return self.correct(q, k, v, output.out, branch.layout, causal=causal, scale=scale)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
        impl: Impl = "auto",
        state: nn.Module | None = None,
        key_padding: torch.Tensor | None = None,
        dropout: float = 0.0,
    ) -> tuple[torch.Tensor, Layout]:
        """``(out, layout)``: the method's attention output ``[batch, heads, q_len, d_head]`` and its
        token-level selection (the union of its branches over the call's keys, `coverage`).
        ``state``: the attached state (None: `default_state`); ``dropout``: on each branch's
        attention probabilities (`run_branch`).

        ``key_padding`` ``[batch, kv_len]`` (True = real key): in self-attention (``q_len ==
        kv_len``, or causal with the queries the last ``q_len`` tokens, as when decoding) with
        each example's real tokens in one span, each example is attended alone on its span
        (`workbench.sparse.padding`: the method selects among real keys only; padded query rows
        get 0). Otherwise the padding is added to every branch's selection
        (`with_key_padding`: the method selects on the padded sequence), and a method with
        branches over pooled keys or some rows, or its own ``correct`` or ``combine``, raises
        ``NotImplementedError``."""
        if state is None:
            state = self.default_state(q)
        spans = None
        if key_padding is not None and (q.shape[2] == k.shape[2] or causal):
            spans = real_spans(key_padding)
            if spans is not None and all(span == (0, k.shape[2]) for span in spans):
                spans = key_padding = None  # no padding
        if spans is not None:
            options = {"causal": causal, "scale": scale, "block_size": block_size}

            def attend_one(*qkv: torch.Tensor) -> tuple[torch.Tensor, Layout]:
                return self.attend(*qkv, **options, impl=impl, state=state, dropout=dropout)

            return attend_examples(attend_one, q, k, v, spans, **options)
        if key_padding is not None:
            warnings.warn(
                f"{self.name}: the key padding is not one span of real tokens per example (or "
                "the queries are not the last tokens): the method selects on the padded "
                "sequence and the padded keys are dropped afterwards",
                stacklevel=2,
            )
        branches = self.branches(
            q, k, v, causal=causal, scale=scale, block_size=block_size, state=state
        )
        if key_padding is not None:
            blind = [f"branch {branch.name!r}" for branch in branches if not branch.tokens]
            blind += [
                f"its {name}"
                for name in ("correct", "combine")
                if getattr(type(self), name) is not getattr(SparseMethod, name)
            ]
            if blind:
                raise NotImplementedError(
                    f"{self.name}: {', '.join(blind)} (over pooled keys, some rows, or the "
                    "unmasked call) do not see the key padding; run padded inputs one example at "
                    "a time without padding"
                )
            branches = [
                replace(branch, layout=with_key_padding(branch.layout, key_padding))
                for branch in branches
            ]
        outputs = [
            run_branch(q, k, v, branch, scale=scale, impl=impl, dropout=dropout)
            for branch in branches
        ]
        out = self.combine(
            q, k, v, branches, outputs, causal=causal, scale=scale, state=state, impl=impl
        )
        return out, coverage(branches)

    def hyper_parameters(self) -> dict[str, Any]:
        """The hyper-parameters as a dict (nested methods by their own dicts)."""
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True, eq=False)
class StaticMethod(SparseMethod):
    """An input-agnostic method: one ``[q_len, kv_len]`` token mask, computed from the shapes
    alone and shared by every batch element and head."""

    input_dependent: ClassVar[bool] = False

    @abstractmethod
    def static_mask(
        self, q_len: int, kv_len: int, causal: bool, device: torch.device
    ) -> torch.Tensor:
        """``[q_len, kv_len]`` bool: the entries kept (the causal mask is applied afterwards)."""

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        mask = self.static_mask(q.shape[2], k.shape[2], causal, q.device)
        return token_layout(mask, causal=causal, block_size=block_size)


def _plain(value: Any) -> Any:
    if isinstance(value, SparseMethod):
        return {"name": value.name, **value.hyper_parameters()}
    return value


# ---------------------------------------------------------------------------- validation helpers
def check_int(name: str, value: Any, low: int, high: int | None = MAX_LEN) -> None:
    """``ValueError`` unless ``value`` is an int (not a bool) in ``[low, high]``.

    The default ``high`` is `kernels.layout.MAX_LEN`, the longest sequence a layout holds: every
    integer hyper-parameter counts tokens, blocks or pages, and none is useful beyond any sequence
    the method can meet (while a huge one can overflow or allocate without bound when selecting).
    ``high=None``: no upper bound."""
    upper = "inf" if high is None else str(high)
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        raise ValueError(f"{name} must be an integer in [{low}, {upper}], got {value!r}")


def check_fraction(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """``ValueError`` unless ``value`` is a real number (an int or a float, not a bool) in ``(0, 1]``
    (``[0, 1]`` with ``allow_zero``)."""
    bracket = "[0, 1]" if allow_zero else "(0, 1]"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_finite(value):
        raise ValueError(f"{name} must be a number in {bracket}, got {value!r}")
    if value < 0.0 or (value == 0.0 and not allow_zero) or value > 1.0:
        raise ValueError(f"{name} must lie in {bracket}, got {value!r}")


# ---------------------------------------------------------------------------- shared selection steps
def scores_for(q: torch.Tensor, k: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Scaled float32 scores ``[batch, heads, q_len, kv_len]`` (materialised: fine for the
    reference path and short inputs; long inputs need the kernels' streaming statistics)."""
    return scaled_scores(q, k, default_scale(q.shape[-1]) if scale is None else scale)


def visible(q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """``[q_len, kv_len]`` bool: the entries a dense (optionally causal) attention sees."""
    return attention_mask(q.shape[2], k.shape[2], causal, q.device)


def distances(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """``[q_len, kv_len]`` int64 end-aligned distance ``(i + kv_len - q_len) - j`` of key ``j`` behind
    query ``i`` (0 on the diagonal, negative for future keys)."""
    rows = torch.arange(q_len, device=device).unsqueeze(1) + (kv_len - q_len)
    return rows - torch.arange(kv_len, device=device).unsqueeze(0)


def token_layout(mask: torch.Tensor, *, causal: bool, block_size: int) -> Layout:
    """Layout keeping exactly the True entries of ``mask`` (``[q_len, kv_len]`` shared by every batch
    element and head, or ``[batch|1, heads|1, q_len, kv_len]``), intersected with the causal mask."""
    if mask.dim() == 2:
        mask = mask[None, None]
    if causal:
        mask = mask & causal_token_mask(*mask.shape[2:], mask.device)
    return Layout.from_token_mask(mask, block_q=block_size, block_k=block_size, causal=causal)


def block_layout(
    block_mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor, *, causal: bool, block_size: int
) -> Layout:
    """Layout of a ``[batch|1, heads|1, n_q_blocks, n_kv_blocks]`` bool block mask for q and k."""
    return Layout.from_block_mask(
        block_mask, q.shape[2], k.shape[2], block_q=block_size, block_k=block_size, causal=causal
    )
