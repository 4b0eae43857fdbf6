"""MoA-style per-head windows (Fu et al., "MoA: mixture of sparse attention for automatic large
language model compression", arXiv 2406.14909): every (layer, head) keeps ``sink`` first keys and a
sliding window of its own length. MoA profiles each head's attention on calibration data and
searches the windows (affine in the input length) under a density budget; here a calibration pass
(`MoA.calibrated`) gives each head the smallest of ``candidates`` whose sink + window holds at least
``mass`` of its dense attention on average over the calibration rows.

The per-(layer, head) plan is a hyper-parameter (``plan[layer][head]``, JSON-able, so a run's config
records it) and, once `sparsify` attaches the method, a buffer of each layer's state (`HeadWindows`,
saved with the model). Uncalibrated (``plan=None``), or selecting without a state, every head uses
``window``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from kernels.layout import Layout
from kernels.reference import masked_softmax, scaled_scores
from workbench.sparse.base import SparseMethod, check_fraction, check_int, distances, visible
from workbench.sparse.branches import Branch
from workbench.sparse.registry import register_method
from workbench.sparse.state import SparseState


class HeadWindows(SparseState):
    """One layer's plan: ``windows`` ``[heads]`` int64 buffer."""

    def __init__(self, windows: Sequence[int]) -> None:
        super().__init__("moa")
        self.register_buffer("windows", torch.tensor(list(windows), dtype=torch.int64))


def sink_window_mask(
    windows: torch.Tensor, sink: int, q_len: int, kv_len: int, device: torch.device
) -> torch.Tensor:
    """``[1, heads, q_len, kv_len]`` bool: the first ``sink`` keys and the ``windows[h]`` latest keys
    of every query (end-aligned)."""
    distance = distances(q_len, kv_len, device)
    keys = torch.arange(kv_len, device=device)
    window = windows.to(device)[:, None, None]
    return ((keys < sink) | ((distance >= 0) & (distance < window)))[None]


def _lengths(name: str, value: Any) -> tuple[Any, ...]:
    """``value`` as a tuple; ``TypeError`` naming ``name`` when it is no sequence (a string is
    none here)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence of window lengths, got {value!r}")
    return tuple(value)


@register_method
@dataclass(frozen=True, eq=False)
class MoA(SparseMethod):
    """Sinks plus a window per (layer, head), the windows calibrated (see the module docstring)."""

    name = "moa"
    description = "sinks + a window length per (layer, head) from a calibration pass (MoA)"
    paper = (
        "MoA: mixture of sparse attention for automatic large language model compression, "
        "arXiv 2406.14909"
    )
    input_dependent = False
    short_input_hyper_parameters: ClassVar[Mapping[str, Any]] = {"window": 8}

    window: int = 16
    sink: int = 1
    candidates: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    mass: float = 0.9
    plan: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", _lengths("candidates", self.candidates))
        if self.plan is not None:
            plan = tuple(_lengths("plan", layer) for layer in _lengths("plan", self.plan))
            object.__setattr__(self, "plan", plan)
        super().__post_init__()

    def validate(self) -> None:
        check_int("window", self.window, 1)
        check_int("sink", self.sink, 0)
        if not self.candidates:
            raise ValueError("candidates must hold at least one window length, got ()")
        for candidate in self.candidates:
            check_int("candidates", candidate, 1)
        check_fraction("mass", self.mass)
        if self.plan is not None:
            if not all(self.plan):
                raise ValueError(
                    f"plan must be None or window lengths [layer][head], got {self.plan!r}"
                )
            for layer in self.plan:
                for window in layer:
                    check_int("plan", window, 1)

    def state_module(self, *, layer: int, heads: int, d_head: int) -> HeadWindows:
        if self.plan is None:
            return HeadWindows([self.window] * heads)
        if layer >= len(self.plan) or len(self.plan[layer]) != heads:
            raise ValueError(
                f"plan has no windows for the {heads} sparse heads of layer {layer} "
                f"(plan: {len(self.plan)} layers of {[len(p) for p in self.plan]} heads)"
            )
        return HeadWindows(self.plan[layer])

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
        windows = (self.default_state(q) if state is None else state).windows
        mask = sink_window_mask(windows, self.sink, q.shape[2], k.shape[2], q.device)
        layout = Layout.from_token_mask(
            mask & visible(q, k, causal), block_q=block_size, block_k=block_size, causal=causal
        )
        return [Branch("selection", layout)]

    def select(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        causal: bool,
        scale: float | None = None,
        block_size: int = 64,
    ) -> Layout:
        """The selection with every head at ``window`` (no layer known)."""
        return self.branches(q, k, k, causal=causal, scale=scale, block_size=block_size)[0].layout

    # ------------------------------------------------------------------ calibration
    def head_windows(
        self, q: torch.Tensor, k: torch.Tensor, *, causal: bool, scale: float | None = None
    ) -> list[int]:
        """Per head of ``q`` ``[batch, heads, q_len, d_head]``: the smallest candidate whose sink +
        window holds at least ``mass`` of the dense attention, averaged over batch and rows (the
        largest candidate when none does)."""
        scores = scaled_scores(q, k, scale)
        probs = masked_softmax(scores, visible(q, k, causal).expand_as(scores))[0]
        heads = q.shape[1]
        chosen = torch.full((heads,), max(self.candidates), dtype=torch.int64)
        for candidate in sorted(self.candidates, reverse=True):
            windows = torch.full((heads,), candidate, dtype=torch.int64)
            mask = sink_window_mask(windows, self.sink, q.shape[2], k.shape[2], q.device)
            held = (probs * mask).sum(-1).mean(dim=(0, 2)).cpu()  # [heads]
            chosen = torch.where(held >= self.mass, candidate, chosen)
        return chosen.tolist()

    def calibrated(self, model: nn.Module, inputs: Any, **forward_kwargs: Any) -> MoA:
        """This method with the ``plan`` of a dense forward of ``model`` on ``inputs`` (every
        layer; `workbench.capture.capture`)."""
        from workbench.capture import capture

        cache = capture(model, inputs, **forward_kwargs)
        plan = []
        for layer in cache:
            k = layer.k.repeat_interleave(layer.q.shape[1] // layer.k.shape[1], dim=1)
            plan.append(
                tuple(self.head_windows(layer.q, k, causal=layer.causal, scale=layer.scale))
            )
        return replace(self, plan=tuple(plan))


def main() -> None:
    """Write this method's layout figure (``moa.html``)."""
    from workbench.viz.methods import write_method_figure

    write_method_figure(MoA())


if __name__ == "__main__":
    main()
