"""Install a sparse-attention method into a model for chosen layers and heads.

    with sparsify(model, workbench.sparse.get("sink_window", window=16), layers=[1]) as record:
        logits = model(tokens)
    record.densities()  # {1: 0.31}: fraction of the visible entries the layer attended to

Inside the block the chosen layers run through `workbench.attention.route_attention` with
`SparseCore`: per attention call, ``method.attend`` runs the method's branches through
`kernels.api.sparse_attention` and combines them (a single-branch method: ``method.select`` gives a
`Layout` on the call's q and k, the key padding is added to it (`with_key_padding`), and
``method.correct`` fixes the output). Heads not chosen keep exact dense attention. Everything outside
the core is the model's own code, so ``hook_q`` / ``hook_z`` and the other hooks still fire, and on
exit the model is restored exactly (outputs bitwise identical to before the block).

Methods with a learned state (`SparseMethod.state_module`): on entry each chosen layer's attention
module gets the submodule ``sparse_state`` (`workbench.sparse.state`), found again there by every
call; ``record.states`` lists them (e.g. for an optimiser). On exit they are removed, unless
``keep_state=True``: then they stay part of the model (trained, saved with it) and a later
``sparsify`` with a method of the same name reuses them.

Decoding: a causal call with fewer queries than keys (generating with a key-value cache, Hugging
Face's or TransformerLens': the queries are the last tokens) runs the method on the new queries
against every cached key, so methods made for decoding (``quest``'s pages per query) select
there. A method whose selection of a row depends only on that row (``top_k``, ``top_p``,
``sink_window``) then gives each generated token what the full forward gives its row.

Limits:

* Cross-attention (non-causal calls with fewer queries than keys) raises
  ``NotImplementedError``.
* Padded batches (``attention_mask``) with one span of real tokens per example (right or left
  padding) are attended example by example (`workbench.sparse.padding`): each example's real
  tokens get exactly what the example gets alone (the method selects among real keys; the sinks of
  a left-padded example are its first real tokens), padded query rows get 0. Other masks (real
  tokens in several spans) are applied on top of the selection, with a warning, and methods whose
  correction, combination of branches or pooled branches would not see them refuse them.
* ``rettention`` needs statistics calibrated on the very call it corrects, so it raises here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kernels.api import Impl
from kernels.layout import Layout
from kernels.reference import repeat_kv, scaled_scores
from workbench.attention import (
    AttentionCall,
    AttentionInputs,
    attention_module,
    check_layers,
    dense_layout,
    full_mask,
    hf_num_layers,
    is_transformer_lens,
    layout_attention,
    route_attention,
)
from workbench.sparse.base import SparseMethod
from workbench.sparse.branches import with_key_padding  # noqa: F401 (part of this module's API)
from workbench.sparse.state import STATE_NAME


def real_queries(call: AttentionInputs) -> torch.Tensor:
    """``[batch|1, 1, q_len, 1]`` bool: query rows of real tokens (self-attention: query ``i`` is
    token ``kv_len - q_len + i``, the last tokens when decoding with a key-value cache)."""
    q_len = call.q.shape[2]
    if call.key_padding is None:
        return torch.ones(1, 1, q_len, 1, dtype=torch.bool, device=call.q.device)
    return call.key_padding[:, None, call.key_padding.shape[1] - q_len :, None]


def kept_fraction(layout: Layout, call: AttentionInputs, q: torch.Tensor, k: torch.Tensor) -> float:
    """Fraction of the visible (causal, real key, real query) entries that ``layout`` keeps, over
    batch and the heads of ``q`` ``[batch, heads, q_len, d_head]`` (``k`` ``[batch, kv_heads, kv_len,
    d_head]``). Materialises ``q_len x kv_len`` per head."""
    scores = None
    if layout.row_threshold is not None:
        scores = scaled_scores(q, repeat_kv(k, q.shape[1]), call.scale)
    visible = full_mask(q.shape[2], k.shape[2], call.causal, call.key_padding) & real_queries(call)
    visible = visible.to(q.device).expand(q.shape[0], q.shape[1], -1, -1)
    kept = layout.to_dense(scores) & visible
    return kept.sum().item() / max(visible.sum().item(), 1)


def call_state(call: AttentionInputs) -> nn.Module | None:
    """The state attached to the call's attention module (None: none, or a capture)."""
    module = getattr(call, "module", None)
    return None if module is None else getattr(module, STATE_NAME, None)


@dataclass(frozen=True, eq=False)
class SparseResult:
    """One sparse attention call.

    Attributes:
        z: ``[batch, heads, q_len, d_head]`` output of every head (dense for heads not chosen).
        layout: the selection of the chosen heads, key padding included.
        q: ``[batch, chosen, q_len, d_head]`` queries of the chosen heads.
        k: ``[batch, chosen|kv_heads, kv_len, d_head]`` the keys they attend to.
    """

    z: torch.Tensor
    layout: Layout
    q: torch.Tensor
    k: torch.Tensor


@dataclass
class SparseCore:
    """The routed core of `sparsify`: ``core(call) -> z``, recording per-call densities.

    Attributes:
        method: the sparse method.
        heads: heads that attend sparsely (None = all).
        block_size: block size of the selected layouts.
        impl: kernels implementation of `kernels.api.sparse_attention`.
        calls: one dict per call, ``{"layer", "q_len", "kv_len", "block_density", "density"}``
            (``density``: `kept_fraction`); recorded when ``record`` is True.
    """

    method: SparseMethod
    heads: tuple[int, ...] | None = None
    block_size: int = 64
    impl: Impl = "auto"
    record: bool = True
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        result = self.compute(call)
        if self.record:
            self.calls.append(
                {
                    "layer": call.layer,
                    "q_len": call.q.shape[2],
                    "kv_len": call.k.shape[2],
                    "block_density": result.layout.block_density(),
                    "density": kept_fraction(result.layout, call, result.q, result.k),
                }
            )
        return result.z

    def compute(self, call: AttentionInputs) -> SparseResult:
        """Sparse attention of the chosen heads, dense attention of the others."""
        q_len, kv_len = call.q.shape[2], call.k.shape[2]
        if q_len != kv_len and not (call.causal and q_len < kv_len):
            raise NotImplementedError(
                f"sparsify takes self-attention: q_len == kv_len, or fewer queries than keys in "
                f"causal attention (decoding with a key-value cache); got q_len {q_len} and "
                f"kv_len {kv_len}{'' if call.causal else ' without a causal mask'}"
            )
        q, k, v = self._chosen(call)
        out, layout = self.method.attend(
            q,
            k,
            v,
            causal=call.causal,
            scale=call.scale,
            block_size=self.block_size,
            impl=self.impl,
            state=call_state(call),
            key_padding=call.key_padding,
            dropout=call.dropout,
        )
        if self.heads is None:
            return SparseResult(out, layout, q, k)
        dense = layout_attention(
            call.q,
            call.k,
            call.v,
            dense_layout(call),
            scale=call.scale,
            dropout=call.dropout,
            impl=self.impl,
        )
        chosen = torch.tensor(self.heads, device=dense.device)
        return SparseResult(dense.index_copy(1, chosen, out.to(dense.dtype)), layout, q, k)

    def _chosen(self, call: AttentionInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of the chosen heads (k, v repeated per query head when heads are chosen)."""
        if self.heads is None:
            return call.q, call.k, call.v
        heads, n_heads = list(self.heads), call.q.shape[1]
        if heads[-1] >= n_heads:
            raise ValueError(f"heads must lie in 0..{n_heads - 1}, got {self.heads}")
        return (
            call.q[:, heads],
            repeat_kv(call.k, n_heads)[:, heads],
            repeat_kv(call.v, n_heads)[:, heads],
        )


@dataclass
class SparsifyRecord:
    """What `sparsify` yields: ``calls`` holds one dict per routed attention call, ``states`` the
    method's state per layer (empty for methods without one)."""

    calls: list[dict[str, Any]]
    states: dict[int, nn.Module] = field(default_factory=dict)

    def densities(self, key: str = "density") -> dict[int, float]:
        """Mean ``key`` (``"density"`` or ``"block_density"``) per layer over the recorded calls."""
        values: dict[int, list[float]] = defaultdict(list)
        for entry in self.calls:
            values[entry["layer"]].append(entry[key])
        return {layer: sum(found) / len(found) for layer, found in sorted(values.items())}


def check_heads(heads: Sequence[int] | None) -> tuple[int, ...] | None:
    """Sorted distinct head indices (None = every head); ``ValueError`` if empty or negative."""
    if heads is None:
        return None
    chosen = tuple(sorted(set(int(head) for head in heads)))
    if not chosen or chosen[0] < 0:
        raise ValueError(f"heads must be a non-empty set of head indices, got {heads}")
    return chosen


def layers_and_head_dim(model: nn.Module) -> tuple[int, int]:
    """``(n_layers, d_head)`` of a TransformerLens or Hugging Face model."""
    if is_transformer_lens(model):
        return model.cfg.n_layers, model.cfg.d_head
    config = model.config.get_text_config()
    d_head = getattr(config, "head_dim", None)
    return hf_num_layers(model), int(d_head or config.hidden_size // config.num_attention_heads)


def attach_states(
    model: nn.Module,
    method: SparseMethod,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> tuple[dict[int, nn.Module], list[int]]:
    """Attach ``method``'s state (`SparseMethod.state_module`) to the attention module of every
    layer of ``layers`` (None: all) that has none yet, on that module's device. Returns ``(states
    by layer, the layers attached now)``; a layer already holding a state of another method raises
    ``ValueError``. Nothing is attached for methods without a state."""
    n_layers, d_head = layers_and_head_dim(model)
    chosen_heads = check_heads(heads)
    n_heads = len(chosen_heads) if chosen_heads else model_heads(model)
    states: dict[int, nn.Module] = {}
    added: list[int] = []
    for layer in check_layers(layers, n_layers):
        state = method.state_module(layer=layer, heads=n_heads, d_head=d_head)
        if state is None:
            return {}, []
        module = attention_module(model, layer)
        existing = getattr(module, STATE_NAME, None)
        if existing is not None:
            if getattr(existing, "method", None) != method.name:
                raise ValueError(
                    f"layer {layer} already holds the state of {existing.method!r}, not of "
                    f"{method.name!r}"
                )
            states[layer] = existing
            continue
        device = next(module.parameters()).device
        module.add_module(STATE_NAME, state.to(device))
        states[layer] = state
        added.append(layer)
    return states, added


def model_heads(model: nn.Module) -> int:
    """Attention heads per layer of a TransformerLens or Hugging Face model."""
    if is_transformer_lens(model):
        return model.cfg.n_heads
    return int(model.config.get_text_config().num_attention_heads)


def detach_states(model: nn.Module, layers: Sequence[int]) -> None:
    """Remove the states attached to the attention modules of ``layers``."""
    for layer in layers:
        module = attention_module(model, layer)
        if STATE_NAME in module._modules:
            delattr(module, STATE_NAME)


@contextmanager
def sparsify(
    model: nn.Module,
    method: SparseMethod,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    block_size: int = 64,
    impl: Impl = "auto",
    record: bool = True,
    keep_state: bool = False,
) -> Iterator[SparsifyRecord]:
    """Run the attention of ``layers`` (None = all) of ``model`` through ``method`` inside the block.

    ``heads`` (None = all) attend sparsely, the other heads densely. ``record`` keeps per-call
    densities in the yielded `SparsifyRecord` (``density`` materialises ``q_len x kv_len`` per
    call; pass False for long inputs). ``keep_state``: leave the method's state attached on exit
    (see the module docstring). Models: as `workbench.attention.route_attention`.
    """
    core = SparseCore(method, check_heads(heads), block_size, impl, record)
    states, added = attach_states(model, method, layers, heads)
    try:
        with route_attention(model, core, layers):
            yield SparsifyRecord(core.calls, states)
    finally:
        if not keep_state:
            detach_states(model, added)
