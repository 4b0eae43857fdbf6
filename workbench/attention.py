"""Reroute the attention core of chosen layers of a real model through a function of ours.

One mechanism, shared by the tracer (`workbench.trace`) and the sparse methods: inside
``with route_attention(model, core, layers):`` every chosen layer hands its attention to ``core``
as an `AttentionCall` (q, k, v after every projection and rotary embedding, the score scale, the
causal flag and the key padding) and uses the returned ``z`` in place of its own attention
output. Everything before the core (projections, rotary, hooks) and after it (output projection)
is the model's own code; on exit the model is restored exactly, also when the block raises.

TransformerLens (``HookedTransformer``, ``HookedEncoder``)
    TL 3.9 has no attention switch: `AbstractAttention.forward` always materialises the N x N
    scores. The ``forward`` of each chosen block's ``attn`` module is replaced (as an instance
    attribute, removed or restored on exit) by one that

    1. computes q, k, v with the module's own ``calculate_qkv_matrices`` (``hook_q``, ``hook_k``,
       ``hook_v`` fire) and applies rotary embeddings when ``cfg.positional_embedding_type ==
       "rotary"`` (``hook_rot_q``, ``hook_rot_k`` fire);
    2. calls ``core`` and passes its ``z`` (``[batch, pos, head_index, d_head]``) through
       ``hook_z``;
    3. applies the output projection as TL does (``F.linear`` with ``W_O``, ``b_O``).

    ``hook_attn_scores`` and ``hook_pattern`` do not fire on routed layers (there is no N x N
    matrix), unless the core asks for the model's own attention (`AttentionCall.model_attention`),
    which runs TL's score / mask / softmax code and fires both hooks. The key padding comes from
    ``attention_mask`` (causal models; TL masks padded keys only there) or from the encoder's
    ``additive_attention_mask``. Unsupported configurations raise ``NotImplementedError`` naming
    the config field: ``use_attn_result``, ``load_in_4bit``, ``positional_embedding_type`` alibi /
    relative_positional_bias, ``use_attention_sinks``, ``use_logn_attn``, ``attn_scores_soft_cap``,
    ``clip_qkv``, OLMo qk-norm (``original_architecture``), local attention (``window_size``).
    A key-value cache entry (``past_kv_cache_entry``: ``generate(use_past_kv_cache=True)``) is
    appended to as TL does, and the call's queries are the last positions.

TransformerLens ``TransformerBridge`` (TL-native models of ``TransformerBridge.boot_native``)
    The bridge (TL 3.9, the successor of ``HookedTransformer``) wraps a model of its own: each
    ``blocks[i].attn`` is an ``AttentionBridge`` around a TL-native ``NativeAttention`` whose
    ``q``, ``k``, ``v``, ``o`` projections are ``LinearBridge`` s, so ``hook_q``, ``hook_k``,
    ``hook_v`` are the projections' ``hook_out`` and ``hook_z`` is ``o.hook_in``. The ``forward`` of
    each chosen ``NativeAttention`` is replaced (instance attribute, removed or restored on exit) by
    one that computes q, k, v through those projections (their hooks fire), applies the model's
    rotary embedding, calls ``core`` and passes its ``z`` through ``o`` (``hook_z`` fires). The
    bridge fires ``hook_pattern`` (and, as it does, ``hook_attn_scores`` with the same pattern) from
    the second output of the attention module: on routed layers only when the core asked for the
    model's own attention (`AttentionCall.model_attention`, the native score / mask / softmax code,
    bitwise). The key padding comes from a 2-D ``attention_mask``. ``NotImplementedError`` (naming
    the field) for: bridges around other models (``boot_transformers``: Hugging Face architectures
    have their own attention bridges), ``attn_scores_soft_cap``, ``use_attn_result``,
    ``use_split_qkv_input``, ``use_attn_in`` and 4-D attention masks (at call time).

Hugging Face ``PreTrainedModel`` (BERT-family encoders, GPT-2, Llama-style decoders, ...)
    transformers 5.x dispatches attention through ``ALL_ATTENTION_FUNCTIONS[config.
    _attn_implementation]`` and builds the mask with ``ALL_MASK_ATTENTION_FUNCTIONS`` under the same
    name. For a model that runs implementation ``X`` (``"eager"`` or ``"sdpa"`` on CPU) we register,
    once, a dispatcher under the private name ``"workbench_routed_X"`` (`AttentionInterface.register`)
    together with ``X``'s own mask function (`AttentionMaskInterface.register`), so the mask the
    model builds is exactly the one ``X`` expects, and switch with ``model.set_attn_implementation``
    (restored on exit). The dispatcher looks for a route marker on the attention module it is
    called with: modules of non-chosen layers fall through to ``X`` unchanged (the model's own
    ``eager_attention_forward`` for ``"eager"``), so their outputs are bitwise identical. For chosen
    modules it builds an `AttentionCall` and returns the core's output as ``[batch, q_len, heads,
    d_head]`` with no attention weights.

    * Layer index: ``module.layer_idx`` (set by BERT, GPT-2 and Llama attention modules in
      transformers 5.x); where it is missing, the first integer of the module's qualified name
      (``encoder.layer.3.attention.self`` -> 3). Every module with a ``config`` at a chosen index is
      marked (wrappers included, which is harmless: only modules that call the interface read it).
    * Mask: HF passes ``None`` (pure causal or no padding; causality then comes from
      ``module.is_causal``), a bool ``[batch, 1, q_len, kv_len]`` mask (sdpa, True = attend) or an
      additive float mask (eager: 0 or the dtype's minimum). The key padding is read off the mask
      (a key is real when some query attends to it) and the mask is checked to be exactly
      "causal (end-aligned) and key padding" or "key padding"; anything else (sliding windows,
      packed sequences, custom 4-D masks) raises ``NotImplementedError``.
    * Not supported on routed layers: dropout during training, ``sliding_window``, ``softcap``,
      attention sinks (``s_aux``), GPT-2's ``reorder_and_upcast_attn``.

Cores receive `AttentionCall` and return ``z`` ``[batch, heads, q_len, d_head]``. `dense_core`
computes exact dense attention through `kernels.api.sparse_attention` (a dense `Layout` with the
key padding as token mask); it matches the model's own output to float tolerance. A core that only
observes (the tracer) returns ``call.model_attention()[0]``, the model's own attention, so the
model's outputs stay bitwise unchanged.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from kernels import api
from kernels.layout import Layout, causal_token_mask
from kernels.reference import masked_softmax, repeat_kv, scaled_scores
from workbench.dropout import attention_dropout

ROUTE_PREFIX = "workbench_routed_"
"""Prefix of the private attention-implementation names registered with transformers."""

ROUTE_ATTRIBUTE = "_workbench_attention_route"
"""Instance attribute marking a Hugging Face attention module of a routed layer."""


class ModelAttention(Protocol):
    def __call__(self, with_pattern: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class AttentionInputs(Protocol):
    """What an attention computation needs: an `AttentionCall`, or a layer captured by
    `workbench.capture` (see `AttentionCall` for the fields)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    causal: bool
    key_padding: torch.Tensor | None
    dropout: float


@dataclass(frozen=True, eq=False)
class AttentionCall:
    """One attention call of a routed layer.

    Attributes:
        layer: index of the layer.
        q: ``[batch, heads, q_len, d_head]`` queries (after rotary embeddings).
        k, v: ``[batch, kv_heads, kv_len, d_head]`` keys and values (``heads % kv_heads == 0``).
        scale: factor of the scores, ``softmax(scale * q @ k^T)``.
        causal: end-aligned causal masking (key ``j`` visible to query ``i`` iff
            ``j <= i + kv_len - q_len``).
        key_padding: ``[batch, kv_len]`` bool, True = real token; None when every key is real.
        module: the model's attention module.
        model_attention: the model's own attention for this call, ``(z, pattern)`` with ``z``
            ``[batch, heads, q_len, d_head]``; ``pattern`` ``[batch, heads, q_len, kv_len]`` is TL's
            (``hook_attn_scores`` / ``hook_pattern`` fire) or, for Hugging Face models, the eager
            softmax when ``with_pattern=True`` (else None).
        dropout: dropout probability the model applies to this call's attention probabilities
            (`workbench.dropout.attention_dropout`; 0 in eval mode and for models without it).
            Cores that compute the output themselves apply it (`layout_attention`).
    """

    layer: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    causal: bool
    key_padding: torch.Tensor | None
    module: nn.Module
    model_attention: ModelAttention
    dropout: float = 0.0


def padding_token_mask(key_padding: torch.Tensor | None, q_len: int) -> torch.Tensor | None:
    """Key padding ``[batch, kv_len]`` as a broadcast ``[batch, 1, q_len, kv_len]`` bool view (no
    copy), or None."""
    if key_padding is None:
        return None
    batch, kv_len = key_padding.shape
    return key_padding[:, None, None, :].expand(batch, 1, q_len, kv_len)


def full_mask(
    q_len: int, kv_len: int, causal: bool, key_padding: torch.Tensor | None
) -> torch.Tensor:
    """``[batch|1, 1, q_len, kv_len]`` bool: (end-aligned causal) and key padding ``[batch, kv_len]``."""
    device = "cpu" if key_padding is None else key_padding.device
    mask = torch.ones(1, 1, q_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        mask = mask & causal_token_mask(q_len, kv_len, device)
    return mask if key_padding is None else mask & key_padding[:, None, None, :]


AttentionCore = Callable[[AttentionCall], torch.Tensor]
"""``core(call) -> z [batch, heads, q_len, d_head]``."""


def dense_layout(call: AttentionInputs) -> Layout:
    """Dense `Layout` of a call: every block, the causal flag, key padding as token mask."""
    q_len, kv_len = call.q.shape[2], call.k.shape[2]
    layout = Layout.dense(q_len, kv_len, causal=call.causal, device=call.q.device)
    if call.key_padding is None:
        return layout
    blocks = layout.block_mask().expand(call.key_padding.shape[0], -1, -1, -1)
    return Layout.from_block_mask(
        blocks,
        q_len,
        kv_len,
        causal=call.causal,
        token_mask=padding_token_mask(call.key_padding, q_len),
    )


def dense_core(call: AttentionInputs) -> torch.Tensor:
    """Exact dense attention through `kernels.api.sparse_attention` (rows without a key give 0;
    `layout_attention`: with the call's dropout, through the materialised pattern)."""
    return layout_attention(
        call.q, call.k, call.v, dense_layout(call), scale=call.scale, dropout=call.dropout
    )


def layout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    *,
    scale: float | None,
    dropout: float = 0.0,
    impl: api.Impl = "auto",
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` ``[batch, heads, q_len, d_head]`` over the keys ``layout`` keeps (``k``,
    ``v`` ``[batch, kv_heads, kv_len, d_head]``) -> ``[batch, heads, q_len, d_head]``, with
    ``dropout`` on the attention probabilities (and the rows' logsumexp ``[batch, heads, q_len]``
    float32 with ``return_lse``, before dropout).

    Without dropout: `kernels.api.sparse_attention` (``impl``). With dropout the kernels cannot
    run (they never form the probabilities): the pattern is materialised (`kernels.reference`
    scores and masked softmax, float32), dropped out from torch's default generator and applied
    to ``v``; ``impl="triton"`` then raises ``NotImplementedError``."""
    if dropout == 0.0:
        return api.sparse_attention(q, k, v, layout, scale=scale, impl=impl, return_lse=return_lse)
    if impl == "triton":
        raise NotImplementedError(
            "the Triton kernels have no attention dropout: use impl 'auto' or 'reference' "
            "(the pattern is then materialised)"
        )
    scores = scaled_scores(q, k, scale)
    probs, lse = masked_softmax(scores, layout.to_dense(scores))
    probs = F.dropout(probs, dropout, training=True)
    out = torch.einsum("bhij,bhjd->bhid", probs, repeat_kv(v, q.shape[1]).float()).to(q.dtype)
    return (out, lse) if return_lse else out


@contextmanager
def route_attention(
    model: nn.Module, core: AttentionCore, layers: Sequence[int] | None = None
) -> Iterator[nn.Module]:
    """Run the attention of ``layers`` (None = all) of ``model`` through ``core`` inside the block.

    ``model``: a TransformerLens ``HookedTransformer`` / ``HookedEncoder`` / ``TransformerBridge``
    (TL-native) or a Hugging Face ``PreTrainedModel``. See the module docstring for what is replaced
    and what is supported.
    """
    if is_transformer_lens(model):
        chosen = check_layers(layers, model.cfg.n_layers)
        with ExitStack() as stack:
            for layer in chosen:
                if is_transformer_bridge(model):
                    stack.enter_context(_route_bridge_block(model, layer, core))
                else:
                    stack.enter_context(_route_tl_block(model.blocks[layer].attn, layer, core))
            yield model
    elif is_hugging_face(model):
        chosen = check_layers(layers, hf_num_layers(model))
        with _route_hf(model, core, chosen):
            yield model
    else:
        raise TypeError(
            "route_attention needs a TransformerLens HookedTransformer / HookedEncoder / "
            f"TransformerBridge or a Hugging Face PreTrainedModel, got {type(model).__name__}"
        )


def check_layers(
    layers: Sequence[int] | None, n_layers: int, name: str = "layers"
) -> tuple[int, ...]:
    """Validated, sorted, distinct layer indices (None = all ``n_layers``); errors call them
    ``name`` (``"heads"`` when the indices are heads)."""
    if layers is None:
        return tuple(range(n_layers))
    chosen = tuple(sorted(set(int(layer) for layer in layers)))
    if not chosen or chosen[0] < 0 or chosen[-1] >= n_layers:
        raise ValueError(f"{name} must be a non-empty subset of 0..{n_layers - 1}, got {layers}")
    return chosen


def _class_names(obj: object) -> set[str]:
    return {cls.__name__ for cls in type(obj).__mro__}


def is_transformer_lens(model: nn.Module) -> bool:
    """True for TransformerLens models: ``HookedTransformer``, ``HookedEncoder`` and
    ``TransformerBridge`` (TL's ``cfg``, hook names and ``hooks()``; checked by class names: no
    import of transformer_lens)."""
    return bool(_class_names(model) & {"HookedTransformer", "HookedEncoder", "TransformerBridge"})


def is_transformer_bridge(model: nn.Module) -> bool:
    """True for TransformerLens ``TransformerBridge`` models (checked by class name)."""
    return "TransformerBridge" in _class_names(model)


def is_hugging_face(model: nn.Module) -> bool:
    return any(cls.__name__ == "PreTrainedModel" for cls in type(model).__mro__)


def model_size(model: nn.Module) -> tuple[int, int]:
    """``(n_layers, n_heads)`` of a TransformerLens or Hugging Face model (``TypeError`` else)."""
    if is_transformer_lens(model):
        return model.cfg.n_layers, model.cfg.n_heads
    if is_hugging_face(model):
        return hf_num_layers(model), int(model.config.get_text_config().num_attention_heads)
    raise TypeError(
        "need a TransformerLens HookedTransformer / HookedEncoder or a Hugging Face "
        f"PreTrainedModel, got {type(model).__name__}"
    )


def attention_module(model: nn.Module, layer: int) -> nn.Module:
    """The module a routed call of ``layer`` reports as `AttentionCall.module`: TL's
    ``blocks[layer].attn``, a bridge's ``NativeAttention``, or the Hugging Face module of that layer
    that calls the attention interface (the innermost ``*Attention`` module with a ``config``)."""
    if is_transformer_bridge(model):
        return bridge_native_attention(model, layer)
    if is_transformer_lens(model):
        return model.blocks[layer].attn
    if is_hugging_face(model):
        found = [
            module
            for name, module in model.named_modules()
            if hf_layer_index(name, module) == layer
            and hasattr(module, "config")
            and type(module).__name__.endswith("Attention")
        ]
        if found:
            return found[-1]  # named_modules lists a wrapper before the module inside it
        raise NotImplementedError(f"no attention module found for layer {layer}")
    raise TypeError(
        "need a TransformerLens HookedTransformer / HookedEncoder / TransformerBridge or a "
        f"Hugging Face PreTrainedModel, got {type(model).__name__}"
    )


def hf_num_layers(model: nn.Module) -> int:
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text_config.num_hidden_layers)


# ---------------------------------------------------------------------------- TransformerLens
OLMO_QK_NORM = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
"""Architectures whose TL attention normalises q and k inside ``forward`` (not supported)."""


def check_tl_supported(cfg: Any, attn: nn.Module) -> None:
    """Raise ``NotImplementedError`` naming the config field a routed TL layer cannot honour."""
    from transformer_lens.utilities.activation_functions import softcap_enabled

    unsupported = {
        "use_attn_result": cfg.use_attn_result,
        "load_in_4bit": cfg.load_in_4bit,
        "positional_embedding_type (alibi / relative_positional_bias)": (
            cfg.positional_embedding_type in ("alibi", "relative_positional_bias")
        ),
        "use_attention_sinks": cfg.use_attention_sinks,
        "use_logn_attn": cfg.use_logn_attn,
        "attn_scores_soft_cap": softcap_enabled(cfg.attn_scores_soft_cap),
        "clip_qkv": cfg.clip_qkv is not None,
        "original_architecture (OLMo qk-norm)": cfg.original_architecture in OLMO_QK_NORM,
        "window_size (local attention)": attn.attn_type == "local",
    }
    for field, present in unsupported.items():
        if present:
            raise NotImplementedError(f"route_attention does not support cfg.{field}")


def already_routed(where: str) -> RuntimeError:
    """The error for routing attention that an open block (`sparsify`, `tracing`, `capturing`)
    already routes: one route per layer at a time."""
    return RuntimeError(
        f"{where} is already routed by an open sparsify, tracing or capturing block; to trace or "
        "capture a model under a sparse method, pass the method there (tracing(model, config, "
        "sparse=method, sparse_layers=...), capture(model, inputs, sparse=SparsePlan(method))) "
        "instead of nesting the blocks"
    )


def _is_routed(module: nn.Module) -> bool:
    """Whether ``module``'s forward is one of our routed replacements."""
    forward = module.__dict__.get("forward")
    return isinstance(forward, functools.partial) and forward.func in (
        _tl_routed_forward,
        _bridge_routed_forward,
    )


@contextmanager
def _route_tl_block(attn: nn.Module, layer: int, core: AttentionCore) -> Iterator[None]:
    check_tl_supported(attn.cfg, attn)
    if _is_routed(attn):
        raise already_routed(f"the attention of layer {layer}")
    had_forward = "forward" in attn.__dict__
    previous = attn.__dict__.get("forward")
    attn.forward = functools.partial(_tl_routed_forward, attn, layer, core)
    try:
        yield
    finally:
        if had_forward:
            attn.forward = previous
        else:
            del attn.forward


def _tl_routed_forward(
    attn: nn.Module,
    layer: int,
    core: AttentionCore,
    query_input: torch.Tensor,
    key_input: torch.Tensor,
    value_input: torch.Tensor,
    past_kv_cache_entry: Any = None,
    additive_attention_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replacement of `AbstractAttention.forward` (same signature); returns ``[batch, pos, d_model]``.
    With a key-value cache entry (generation) the new keys and values are appended to it and the
    queries (the last positions) attend to every cached key, as TL does."""
    if position_bias is not None:
        raise NotImplementedError("route_attention does not support position_bias")
    # [batch, pos, head_index, d_head]; k, v: [batch, kv_pos, kv_head_index, d_head]
    q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
    offset = 0  # positions before the queries' (cached)
    if past_kv_cache_entry is not None:
        offset = past_kv_cache_entry.past_keys.size(1)
        k, v = past_kv_cache_entry.append(k, v)
    if attn.cfg.positional_embedding_type == "rotary":
        q = attn.hook_rot_q(attn.apply_rotary(q, offset, attention_mask))
        k = attn.hook_rot_k(attn.apply_rotary(k, 0, attention_mask))  # cached keys: no offset
    causal = (attn._attention_dir_override or attn.cfg.attention_dir) == "causal"
    call = AttentionCall(
        layer=layer,
        q=q.transpose(1, 2),
        k=k.transpose(1, 2),
        v=v.transpose(1, 2),
        scale=1.0 / attn.attn_scale,
        causal=causal,
        key_padding=_tl_key_padding(causal, attention_mask, additive_attention_mask),
        module=attn,
        model_attention=functools.partial(
            _tl_model_attention,
            attn,
            q,
            k,
            v,
            causal,
            attention_mask,
            additive_attention_mask,
            offset=offset,
        ),
        dropout=attention_dropout(attn),
    )
    z = attn.hook_z(core(call).transpose(1, 2))  # [batch, pos, head_index, d_head]
    return _tl_output_projection(attn, z)


def _tl_key_padding(
    causal: bool, attention_mask: torch.Tensor | None, additive_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """``[batch, kv_pos]`` bool from TL's masks (TL applies ``attention_mask`` only when causal)."""
    padding = attention_mask.bool() if causal and attention_mask is not None else None
    if additive_mask is not None:
        if additive_mask.dim() != 4 or additive_mask.shape[1:3] != (1, 1):
            raise NotImplementedError(
                "route_attention supports additive_attention_mask of shape [batch, 1, 1, kv_pos], "
                f"got {tuple(additive_mask.shape)}"
            )
        real = additive_mask[:, 0, 0, :] == 0
        padding = real if padding is None else padding & real
    return padding


def _tl_model_attention(
    attn: nn.Module,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    attention_mask: torch.Tensor | None,
    additive_mask: torch.Tensor | None,
    with_pattern: bool = False,
    *,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TL's own score / mask / softmax / z code (``hook_attn_scores``, ``hook_pattern`` fire).

    ``q`` ``[batch, pos, head_index, d_head]``, ``k, v`` ``[batch, kv_pos, kv_head_index, d_head]``
    (``kv_pos = offset + pos``: ``offset`` cached positions). Returns ``z`` ``[batch, head_index,
    pos, d_head]`` and the pattern (``with_pattern`` is accepted for the common signature: TL
    always has it).
    """
    scores = attn.calculate_attention_scores(q, k)  # [batch, head_index, query_pos, key_pos]
    if causal:
        scores = attn.apply_causal_mask(scores, offset, attention_mask)
    if additive_mask is not None:
        scores = scores + additive_mask
    scores = attn.hook_attn_scores(scores)
    pattern = F.softmax(scores, dim=-1)
    pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
    pattern = attn.hook_pattern(pattern).to(device=v.device, dtype=v.dtype)
    if getattr(attn, "repeat_kv_heads", 1) > 1 and not attn.cfg.ungroup_grouped_query_attention:
        v = torch.repeat_interleave(v, dim=2, repeats=attn.repeat_kv_heads)
    return pattern @ v.transpose(1, 2), pattern


def _tl_output_projection(attn: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """TL's output projection (``use_attn_result=False``, not 4-bit): ``[batch, pos, d_model]``."""
    w = attn.W_O.flatten(0, 1).T.contiguous()  # [d_model, head_index * d_head]
    b_O = attn.b_O.to(z.device)
    w = w.to(z.device)
    z = z.to(w.dtype).reshape(z.shape[0], z.shape[1], -1)
    if z.device.type == "mps":  # as TL: F.linear is broken on MPS with torch 2.8
        return torch.matmul(z, w.T) + b_O
    return F.linear(z, w, b_O)


# ---------------------------------------------------------------------------- TransformerBridge
def bridge_native_attention(model: nn.Module, layer: int) -> nn.Module:
    """The ``NativeAttention`` of ``layer`` of a TL-native bridge; ``NotImplementedError`` naming
    what the layer holds otherwise."""
    blocks = getattr(model, "blocks", None)
    bridge = None if blocks is None else getattr(blocks[layer], "attn", None)
    native = getattr(bridge, "original_component", None)
    if type(bridge).__name__ != "AttentionBridge" or "NativeAttention" not in _class_names(native):
        raise NotImplementedError(
            "route_attention supports TransformerBridge models of TL-native attention "
            f"(TransformerBridge.boot_native); layer {layer} is a {type(bridge).__name__} around "
            f"{type(native).__name__} (architecture {model.cfg.architecture!r})"
        )
    return native


def check_bridge_supported(cfg: Any, native: nn.Module) -> None:
    """Raise ``NotImplementedError`` naming the config field a routed bridge layer cannot honour."""
    from transformer_lens.utilities.activation_functions import softcap_enabled

    unsupported = {
        "attn_scores_soft_cap": softcap_enabled(native.attn_scores_soft_cap),
        "use_attn_result": getattr(cfg, "use_attn_result", False),
        "use_split_qkv_input": getattr(cfg, "use_split_qkv_input", False),
        "use_attn_in": getattr(cfg, "use_attn_in", False),
    }
    for field, present in unsupported.items():
        if present:
            raise NotImplementedError(f"route_attention does not support cfg.{field}")


@contextmanager
def _route_bridge_block(model: nn.Module, layer: int, core: AttentionCore) -> Iterator[None]:
    native = bridge_native_attention(model, layer)
    check_bridge_supported(model.cfg, native)
    if _is_routed(native):
        raise already_routed(f"the attention of layer {layer}")
    had_forward = "forward" in native.__dict__
    previous = native.__dict__.get("forward")
    native.forward = functools.partial(_bridge_routed_forward, native, layer, core)
    try:
        yield
    finally:
        if had_forward:
            native.forward = previous
        else:
            del native.forward


def _bridge_routed_forward(
    native: nn.Module,
    layer: int,
    core: AttentionCore,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Replacement of ``NativeAttention.forward`` (same signature): ``hidden_states [batch, pos,
    d_model]`` -> ``(output [batch, pos, d_model], pattern [batch, heads, pos, pos] or None)``."""
    del kwargs  # as NativeAttention: no key-value cache
    if attention_mask is not None and attention_mask.dim() != 2:
        raise NotImplementedError(
            "route_attention supports 2-D attention masks [batch, pos] on TransformerBridge "
            f"models, got shape {tuple(attention_mask.shape)}"
        )
    batch, seq, _ = hidden_states.shape
    heads, kv_heads, d_head = native.n_heads, native.n_kv_heads, native.d_head
    # q: [batch, heads, pos, d_head]; k, v: [batch, kv_heads, pos, d_head] (hook_q/k/v fire)
    q = native.q(hidden_states).reshape(batch, seq, heads, d_head).transpose(1, 2)
    k = native.k(hidden_states).reshape(batch, seq, kv_heads, d_head).transpose(1, 2)
    v = native.v(hidden_states).reshape(batch, seq, kv_heads, d_head).transpose(1, 2)
    if native.rotary is not None:
        q, k = native.rotary.apply_rope(q, k, position_ids=position_ids)
    key_padding = None if attention_mask is None else attention_mask.bool()
    patterns: list[torch.Tensor] = []
    call = AttentionCall(
        layer=layer,
        q=q,
        k=k,
        v=v,
        scale=1.0 / float(native.scale),
        causal=bool(native.causal),
        key_padding=key_padding,
        module=native,
        model_attention=functools.partial(
            _bridge_model_attention, native, q, k, v, key_padding, patterns
        ),
    )
    z = core(call).transpose(1, 2).contiguous().view(batch, seq, heads * d_head)
    return native.o(z), (patterns[-1] if patterns else None)  # hook_z fires in `o`


def _bridge_model_attention(
    native: nn.Module,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding: torch.Tensor | None,
    patterns: list[torch.Tensor],
    with_pattern: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``NativeAttention``'s own score / mask / softmax / z code: ``z`` ``[batch, heads, pos,
    d_head]`` and the pattern, which is also appended to ``patterns`` (the routed forward returns it
    so that the bridge fires ``hook_pattern``). ``with_pattern``: the common signature."""
    del with_pattern
    seq = q.shape[2]
    if native.kv_repeats > 1:  # as the model: repeat_interleave over heads
        k = k.repeat_interleave(native.kv_repeats, dim=1)
        v = v.repeat_interleave(native.kv_repeats, dim=1)
    scores = torch.matmul(q, k.transpose(-2, -1)) / native.scale
    if native.causal:
        masked = native.causal_mask[:seq, :seq]
    else:
        masked = torch.zeros(seq, seq, dtype=torch.bool, device=scores.device)
    if key_padding is not None:
        masked = masked | ~key_padding[:, None, None, :]
    scores = scores.masked_fill(masked, float("-inf"))
    pattern = F.softmax(scores, dim=-1).masked_fill(masked, 0.0)
    patterns.append(pattern)
    return torch.matmul(pattern, v), pattern


# ---------------------------------------------------------------------------- Hugging Face
@dataclass(frozen=True)
class _Route:
    layer: int
    core: AttentionCore


@contextmanager
def _route_hf(model: nn.Module, core: AttentionCore, layers: tuple[int, ...]) -> Iterator[None]:
    previous = model.config._attn_implementation
    if isinstance(previous, str) and previous.startswith(ROUTE_PREFIX):
        raise already_routed("the model's attention")
    if not isinstance(previous, str):
        raise RuntimeError(f"cannot route a model whose attention implementation is {previous!r}")
    if getattr(model.config, "reorder_and_upcast_attn", False):
        raise NotImplementedError("route_attention does not support config.reorder_and_upcast_attn")
    name = _register_hf_route(previous)
    marked = _mark_hf_modules(model, core, layers)
    try:
        model.set_attn_implementation(name)
        yield
    finally:
        for module in marked:
            delattr(module, ROUTE_ATTRIBUTE)
        model.set_attn_implementation(previous)


def _register_hf_route(original: str) -> str:
    """Register (idempotently) the dispatcher for models running ``original``; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if original not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise NotImplementedError(
            f"route_attention does not support attention implementation {original!r}"
        )
    name = ROUTE_PREFIX + original
    AttentionInterface.register(name, _hf_routed_attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    return name


def _mark_hf_modules(
    model: nn.Module, core: AttentionCore, layers: tuple[int, ...]
) -> list[nn.Module]:
    candidates = []
    for name, module in model.named_modules():
        if ROUTE_ATTRIBUTE in module.__dict__:
            raise already_routed(f"module {name}")
        layer = hf_layer_index(name, module)
        if layer in layers and hasattr(module, "config"):
            candidates.append((module, layer))
    for module, layer in candidates:
        setattr(module, ROUTE_ATTRIBUTE, _Route(layer, core))
    return [module for module, _ in candidates]


def hf_layer_index(name: str, module: nn.Module) -> int | None:
    """``module.layer_idx`` or the first integer of the qualified ``name`` (None if neither)."""
    layer = getattr(module, "layer_idx", None)
    if isinstance(layer, int):
        return layer
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(match.group(1)) if match else None


def _hf_original_attention(module: nn.Module) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(the implementation the model ran before routing, the module's eager function)``."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise NotImplementedError(
            f"{type(module).__module__} has no eager_attention_forward to fall back to"
        )
    original = module.config._attn_implementation.removeprefix(ROUTE_PREFIX)
    return ALL_ATTENTION_FUNCTIONS.get_interface(original, eager), eager


def _hf_routed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The registered attention function: routes marked modules, falls through for the others.

    ``query`` ``[batch, heads, q_len, d_head]``, ``key``/``value`` ``[batch, kv_heads, kv_len,
    d_head]``; returns ``([batch, q_len, heads, d_head], weights or None)`` like HF's functions.
    """
    original, eager = _hf_original_attention(module)
    route: _Route | None = getattr(module, ROUTE_ATTRIBUTE, None)
    if route is None:
        return original(module, query, key, value, attention_mask, **kwargs)
    _check_hf_kwargs(module, kwargs)
    causal, key_padding = hf_mask_to_padding(
        attention_mask, bool(getattr(module, "is_causal", False)), query.shape[2], key.shape[2]
    )
    scaling = kwargs.get("scaling")
    return route.core(
        AttentionCall(
            layer=route.layer,
            q=query,
            k=key,
            v=value,
            scale=float(query.shape[-1] ** -0.5 if scaling is None else scaling),
            causal=causal,
            key_padding=key_padding,
            module=module,
            model_attention=functools.partial(
                _hf_model_attention,
                original,
                eager,
                (module, query, key, value, attention_mask),
                kwargs,
                full_mask(query.shape[2], key.shape[2], causal, key_padding),
            ),
        )
    ).transpose(1, 2), None


def _hf_model_attention(
    original: Callable[..., Any],
    eager: Callable[..., Any],
    arguments: tuple[Any, ...],
    kwargs: dict[str, Any],
    mask: torch.Tensor,
    with_pattern: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's own attention ``(z [batch, heads, q_len, d_head], weights or None)``; with
    ``with_pattern`` through the module's eager function (additive mask built from ``mask``
    ``[batch|1, 1, q_len, kv_len]`` bool), which returns the softmax weights."""
    if with_pattern:
        module, query, key, value, _ = arguments
        additive = torch.zeros(mask.shape, dtype=query.dtype, device=query.device)
        additive = additive.masked_fill(~mask.to(query.device), torch.finfo(query.dtype).min)
        out, weights = eager(module, query, key, value, additive, **kwargs)
    else:
        out, weights = original(*arguments, **kwargs)
    return out.transpose(1, 2), weights


def _check_hf_kwargs(module: nn.Module, kwargs: dict[str, Any]) -> None:
    if module.training and kwargs.get("dropout", 0.0) > 0:
        raise NotImplementedError("route_attention does not support attention dropout in training")
    for name in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"route_attention does not support {name!r}")


def hf_mask_to_padding(
    mask: torch.Tensor | None, is_causal: bool, q_len: int, kv_len: int
) -> tuple[bool, torch.Tensor | None]:
    """``(causal, key_padding [batch, kv_len] or None)`` from the mask HF passes to attention.

    ``mask``: None, bool ``[batch, 1, q_len, kv_len]`` (True = attend) or additive float (0 or the
    dtype's minimum). Raises ``NotImplementedError`` unless the mask is exactly (end-aligned causal
    when ``is_causal``) and key padding.
    """
    if mask is None:
        return is_causal, None
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise NotImplementedError(f"unsupported attention mask shape {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        allowed = mask
    else:
        allowed = mask == 0
        if not torch.all(allowed | (mask <= torch.finfo(mask.dtype).min / 2)):
            raise NotImplementedError("additive attention masks must hold only 0 and -inf / min")
    key_padding = allowed.any(dim=2)[:, 0]  # [batch, kv_len]: attended by some query
    expected = key_padding[:, None, None, :]
    if is_causal:
        expected = expected & causal_token_mask(q_len, kv_len, mask.device)
    if not torch.equal(allowed, expected.expand_as(allowed)):
        raise NotImplementedError(
            "the attention mask is not plain (causal and) key padding: sliding windows, packed "
            "sequences and custom 4-D masks are not supported"
        )
    return is_causal, None if bool(key_padding.all()) else key_padding
