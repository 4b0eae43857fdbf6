"""One capture pass over a model's attention, read by every analysis.

``capture(model, inputs)`` runs the model once with the chosen layers routed through
`workbench.attention.route_attention` and returns an `AttentionCache`: per layer a `LayerCapture`
(q, k, v after every projection and rotary embedding, the output ``z`` the layer used, the score
scale, the causal flag, the key padding, the `Layout` of the sparse method the layer ran, the
opt-in pattern) and the model's output. It is TransformerLens's ``run_with_cache`` idea for
attention: the trace statistics (`workbench.trace`), the softmax-stability metrics
(`workbench.metrics.stability`), the fidelity of a sparse method (`workbench.metrics.fidelity`),
the evaluations logged by training and the SAE activations are functions of it, so an analysis
costs one forward per chunk of inputs, not one per metric.

``with capturing(model, ...) as recorder:`` does the same around any forward calls; with
``on_layer`` every `LayerCapture` goes to that function as soon as its layer has run and is not
kept, so a long input needs the memory of one layer's tensors at a time.

Dense or sparse: with a `SparsePlan` the plan's layers run its method as
`workbench.sparse.patch.sparsify` installs it (``z`` is the sparse output, ``layout`` the selection:
the capture describes the model that attends sparsely); other layers run the model's own
attention (bitwise its outputs), or dense attention through the kernels with
``attention="kernels"`` (no N x N scores: long inputs).

Shapes: ``q, z: [batch, heads, q_len, d_head]``, ``k, v: [batch, kv_heads, kv_len, d_head]``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from kernels.api import Impl
from kernels.layout import Layout
from kernels.reference import masked_softmax, scaled_scores
from workbench.attention import (
    AttentionCall,
    check_layers,
    dense_core,
    full_mask,
    model_size,
    route_attention,
)
from workbench.sparse.base import SparseMethod
from workbench.sparse.patch import SparseCore, check_heads

Inputs = torch.Tensor | Mapping[str, torch.Tensor]
"""Token ids ``[batch, pos]`` (or model inputs ``[batch, pos, ...]``), or keyword inputs such as a
tokenizer's output."""


@dataclass(frozen=True)
class SparsePlan:
    """Where a sparse method runs: ``method`` on ``layers`` (None: all) for ``heads`` (None: all;
    the others attend densely), layouts of ``block_size``, attention through ``impl``."""

    method: SparseMethod
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    block_size: int = 64
    impl: Impl = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.method, SparseMethod):
            raise TypeError(f"method must be a SparseMethod, got {type(self.method).__name__}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "heads", check_heads(self.heads))

    def core(self) -> SparseCore:
        """The routed core that computes the method's attention (records nothing)."""
        return SparseCore(self.method, self.heads, self.block_size, self.impl, record=False)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: the method with its hyper-parameters, layers, heads, blocks."""
        return {
            "method": {"name": self.method.name, **self.method.hyper_parameters()},
            "layers": None if self.layers is None else list(self.layers),
            "heads": None if self.heads is None else list(self.heads),
            "block_size": self.block_size,
        }


@dataclass(frozen=True, eq=False)
class LayerCapture:
    """What one attention layer saw and produced in one forward (tensors detached).

    Attributes:
        layer: layer index.
        q: ``[batch, heads, q_len, d_head]`` queries (after rotary embeddings).
        k, v: ``[batch, kv_heads, kv_len, d_head]``.
        z: ``[batch, heads, q_len, d_head]`` the output the layer used (sparse where it ran a
            method).
        scale: factor of the scores, ``softmax(scale * q @ k^T)``.
        causal: end-aligned causal masking.
        key_padding: ``[batch, kv_len]`` bool (True = real key), or None.
        layout: the selection of the sparse heads when the layer ran a method (None: dense); its
            head dimension runs over ``sparse_heads`` (or is 1: shared).
        sparse_heads: the heads that ran the method (None: all of them).
        pattern: ``[batch, heads, q_len, kv_len]`` the model's own attention pattern (opt-in).
        dropout: the dropout the layer applied to its attention probabilities (0 in eval mode).
    """

    layer: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    z: torch.Tensor
    scale: float
    causal: bool
    key_padding: torch.Tensor | None
    layout: Layout | None = None
    sparse_heads: tuple[int, ...] | None = None
    pattern: torch.Tensor | None = None
    dropout: float = 0.0

    @property
    def sparse(self) -> bool:
        """True when the layer ran a sparse method."""
        return self.layout is not None

    def used_mask(self, scores: torch.Tensor) -> torch.Tensor:
        """``[batch, heads, q_len, kv_len]`` bool: the entries the layer attended to (visible, real
        keys; on the sparse heads only the selection), given its scaled ``scores``."""
        mask = full_mask(self.q.shape[2], self.k.shape[2], self.causal, self.key_padding)
        mask = mask.to(scores.device).expand_as(scores).clone()
        if self.sparse:
            heads = list(self.sparse_heads or range(self.q.shape[1]))
            mask[:, heads] &= self.restriction(heads).to_dense(scores[:, heads])
        return mask

    def weights(self) -> torch.Tensor:
        """``[batch, heads, q_len, kv_len]`` float32 attention weights the layer used: the softmax
        over `used_mask` (materialises the scores: short inputs, patterns)."""
        scores = scaled_scores(self.q, self.k, self.scale)
        return masked_softmax(scores, self.used_mask(scores))[0]

    def restriction(self, heads: Sequence[int]) -> Layout | None:
        """The selection the attention of ``heads`` was restricted to: None where they attended
        densely, else the layout of those heads. ``NotImplementedError`` when ``heads`` mixes
        sparse and dense heads (analyse them in two groups)."""
        if self.layout is None:
            return None
        if self.sparse_heads is None:
            return self.layout.take_heads(heads)
        inside = [head in self.sparse_heads for head in heads]
        if not any(inside):
            return None
        if not all(inside):
            raise NotImplementedError(
                f"heads {list(heads)} mix sparse heads {list(self.sparse_heads)} and dense ones"
            )
        return self.layout.take_heads([self.sparse_heads.index(head) for head in heads])


@dataclass
class AttentionCache:
    """`LayerCapture` of every captured layer of one forward, and the model's ``output``."""

    layers: dict[int, LayerCapture] = field(default_factory=dict)
    output: Any = None

    def __getitem__(self, layer: int) -> LayerCapture:
        return self.layers[layer]

    def __iter__(self) -> Iterator[LayerCapture]:
        """The layer captures in layer order."""
        return iter(self.layers[layer] for layer in sorted(self.layers))


OnLayer = Callable[[LayerCapture], None]
PatternGuard = Callable[[int, int, int, int], None]
"""``guard(batch, heads, q_len, kv_len)`` called before a pattern is computed (raises to refuse)."""


@dataclass
class CaptureRecorder:
    """What `capturing` yields: the captures of the forwards run inside the block (unless they
    went to ``on_layer``)."""

    calls: dict[int, list[LayerCapture]] = field(default_factory=lambda: defaultdict(list))

    def cache(self, output: Any = None) -> AttentionCache:
        """The `AttentionCache` of the one forward run inside the block."""
        repeated = sorted(layer for layer, captures in self.calls.items() if len(captures) > 1)
        if repeated:
            raise ValueError(
                f"layers {repeated} ran several times inside the block: a cache holds one forward "
                "(capture each forward on its own, or pass on_layer)"
            )
        return AttentionCache(
            {layer: captures[0] for layer, captures in self.calls.items()}, output
        )


@dataclass
class _CaptureCore:
    """The routed core of `capturing`."""

    layers: tuple[int, ...]
    sparse_layers: tuple[int, ...]
    sparse: SparseCore | None
    attention: Literal["model", "kernels"]
    patterns: bool
    pattern_guard: PatternGuard | None
    on_layer: OnLayer

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        layout, pattern = None, None
        captured = call.layer in self.layers
        if call.layer in self.sparse_layers:
            result = self.sparse.compute(call)
            z, layout = result.z, result.layout
        elif self.attention == "kernels" and not (captured and self.patterns):
            z = dense_core(call)
        else:
            want = captured and self.patterns
            if want and self.pattern_guard is not None:
                self.pattern_guard(*call.q.shape[:3], call.k.shape[2])
            z, pattern = call.model_attention(with_pattern=want)
            pattern = pattern if want else None
        if captured:
            self.on_layer(
                LayerCapture(
                    layer=call.layer,
                    q=call.q.detach(),
                    k=call.k.detach(),
                    v=call.v.detach(),
                    z=z.detach(),
                    scale=call.scale,
                    causal=call.causal,
                    key_padding=call.key_padding,
                    layout=layout,
                    sparse_heads=self.sparse.heads if layout is not None else None,
                    pattern=None if pattern is None else pattern.detach(),
                    dropout=call.dropout,
                )
            )
        return z


@contextmanager
def capturing(
    model: nn.Module,
    *,
    layers: Sequence[int] | None = None,
    sparse: SparsePlan | None = None,
    attention: Literal["model", "kernels"] = "model",
    patterns: bool = False,
    pattern_guard: PatternGuard | None = None,
    on_layer: OnLayer | None = None,
) -> Iterator[CaptureRecorder]:
    """Capture the attention of ``layers`` (None: all) during the forwards run inside the block
    (routes removed on exit, also on errors).

    Args:
        model: a model `workbench.attention.route_attention` accepts.
        layers: the captured layers (None: all).
        sparse: run a sparse method where the plan says (those layers are routed even when not
            captured).
        attention: dense layers run the model's own attention (``"model"``) or dense attention
            through `kernels.api.sparse_attention` (``"kernels"``; patterns always use the model's).
        patterns: also keep the model's own attention pattern of the captured dense layers.
        pattern_guard: called before each pattern is computed (e.g. a memory check).
        on_layer: receives each `LayerCapture` as its layer runs (then not kept in the recorder).
    """
    total = model_size(model)[0]
    captured = check_layers(layers, total)
    sparse_layers = () if sparse is None else check_layers(sparse.layers, total)
    if attention not in ("model", "kernels"):
        raise ValueError(f"attention must be 'model' or 'kernels', got {attention!r}")
    recorder = CaptureRecorder()
    core = _CaptureCore(
        layers=captured,
        sparse_layers=sparse_layers,
        sparse=None if sparse is None else sparse.core(),
        attention=attention,
        patterns=patterns,
        pattern_guard=pattern_guard,
        on_layer=on_layer or (lambda capture: recorder.calls[capture.layer].append(capture)),
    )
    routed = tuple(sorted(set(captured) | set(sparse_layers)))
    with route_attention(model, core, routed):
        yield recorder


def capture(
    model: nn.Module,
    inputs: Inputs,
    *,
    layers: Sequence[int] | None = None,
    sparse: SparsePlan | None = None,
    attention: Literal["model", "kernels"] = "model",
    patterns: bool = False,
    **forward_kwargs: Any,
) -> AttentionCache:
    """Run ``model`` once on ``inputs`` (a tensor, or a mapping passed as keyword arguments) without
    gradients and return the `AttentionCache` of ``layers`` (None: all); see `capturing`."""
    with (
        torch.no_grad(),
        capturing(
            model, layers=layers, sparse=sparse, attention=attention, patterns=patterns
        ) as recorder,
    ):
        output = run_model(model, inputs, **forward_kwargs)
    return recorder.cache(output)


def run_model(model: nn.Module, inputs: Inputs, **forward_kwargs: Any) -> Any:
    """``model(**inputs)`` for a mapping, else ``model(inputs)`` (plus ``forward_kwargs``)."""
    if isinstance(inputs, Mapping):
        return model(**inputs, **forward_kwargs)
    return model(inputs, **forward_kwargs)
