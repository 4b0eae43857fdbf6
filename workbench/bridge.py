"""Toy-task models on TransformerLens' ``TransformerBridge`` (``ModelConfig(backend="bridge")``).

TransformerLens 3.9 deprecates ``HookedTransformer`` and TL 4 removes it; its successor is the
``TransformerBridge``. ``TransformerBridge.boot_native`` builds a random-weights TL-native model
(``NativeModel``: split q / k / v / o linear layers with biases, pre-norm, MLP) offline, with the
hook names of ``HookedTransformer`` (``blocks.{i}.attn.hook_q`` / ``hook_k`` / ``hook_v`` /
``hook_z`` / ``hook_pattern``, ``hook_embed``, ...). `build_bridge` builds the architecture of a
`workbench.models.ModelConfig` on it; `workbench.attention.route_attention` (so `workbench.trace`
and `workbench.sparse.patch.sparsify`) routes its attention.

Same config, two backends:

* **Same function for the same weights.** `hooked_to_bridge_state_dict` maps a
  ``HookedTransformer``'s weights to the bridge's state dict; the two models then give the same
  outputs (bitwise for absolute positions on CPU, float rounding with rotary).
* **Not the same weights for the same seed.** The bridge initialises with TL-native's scheme
  (``init_mode="gpt2"``: ``N(0, 0.8 / sqrt(d_model))``, output projections scaled by
  ``1 / sqrt(2 n_layers)``) from its own generator; ``HookedTransformer`` has no residual scaling.
* **Rotary**: the bridge rotates adjacent pairs of dimensions ``(2i, 2i + 1)`` (Llama / HF),
  ``HookedTransformer`` the halves ``(i, i + d / 2)`` (GPT-NeoX); the mapping permutes the query and
  key dimensions, so ``hook_q`` / ``hook_k`` values are permuted too (the scores are not).
* **Sinusoidal positions**: ``pos_embed``'s weight becomes a fixed buffer, as in
  `workbench.models`.
* **Continuous tasks**: `ContinuousNativeModel`, a ``NativeModel`` whose ``tok_embed`` is the
  linear input projection `LinearInput` (``hook_embed`` fires on it) and whose ``head`` is the
  linear readout; the bridge passes float inputs ``[batch, pos, d_input]`` to it.
* **Supported**: every `ModelConfig` except ``act_fn="gelu_fast"`` (TL-native has no such
  activation: ``ModelConfig.validate`` raises ``ValueError`` naming ``act_fn``). The bridge adds a
  zero, trainable unembedding bias as ``HookedTransformer`` has.

``transformer_lens`` is imported lazily; ``workbench.bridge.ContinuousNativeModel`` is created on
first use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from toy_tasks.base import ToyTask

if TYPE_CHECKING:
    from workbench.model_config import ModelConfig


class LinearInput(nn.Module):
    """Input projection of continuous tasks on the bridge: `workbench.models.LinearEmbed` with an
    embedding's parameter names, ``weight`` ``[d_input, d_model]`` and ``bias`` ``[d_model]`` (the
    bridge's state dict keeps only parameters named so, and reads ``weight`` as ``W_E``)."""

    def __init__(self, d_input: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_input, d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, d_input]`` -> ``[batch, pos, d_model]``."""
        return inputs.to(self.weight.dtype) @ self.weight + self.bias


def native_config(
    config: ModelConfig, n_ctx: int, d_vocab: int, d_vocab_out: int, seed: int
) -> dict[str, Any]:
    """The ``TransformerBridgeConfig`` fields of ``config`` (a dict for ``boot_native``)."""
    rotary = config.positional == "rotary"
    return {
        "n_layers": config.n_layers,
        "d_model": config.d_model,
        "n_heads": config.n_heads,
        "d_head": config.d_head,
        "d_mlp": config.mlp_width,
        "act_fn": config.act_fn,
        "attn_only": config.attn_only,
        "normalization_type": config.normalization,
        "positional_embedding_type": "rotary" if rotary else "standard",
        "rotary_dim": config.d_head if rotary else None,
        "n_ctx": n_ctx,
        "d_vocab": d_vocab,
        "d_vocab_out": d_vocab_out,
        "seed": seed,
    }


def build_bridge(task: ToyTask, config: ModelConfig) -> Any:
    """A causal ``TransformerBridge`` for ``task`` (on CPU, train mode) with the architecture of
    ``config`` (see `workbench.models.build_model`); weights from ``config.seed`` (None: 0), the
    input projection and readout of a continuous model initialised as ``config.input_init`` /
    ``readout_init`` say (drawn from a generator seeded with the same seed), the positions
    multiplied by ``config.position_scale``. The global random state is left as it was."""
    from transformer_lens.model_bridge import TransformerBridge

    from workbench.parametrisation import scale_positions
    from workbench.positions import fix_sinusoidal_positions

    seed = 0 if config.seed is None else config.seed
    if task.kind == "tokens":
        fields = native_config(config, task.seq_len, task.vocab_size, task.vocab_size, seed)
        model = TransformerBridge.boot_native(fields)
    elif task.kind == "continuous":
        fields = native_config(config, task.seq_len, task.d_input, task.d_output, seed)
        model = _continuous_bridge(fields, task.d_input, config)
    else:
        raise ValueError(
            f"backend 'bridge' builds token and continuous models; {task.name} is a {task.kind} "
            "task (use backend 'hooked')"
        )
    if config.positional == "sinusoidal":
        fix_sinusoidal_positions(model.pos_embed.original_component, "weight")
    if config.positional != "rotary":
        scale_positions(model.pos_embed.original_component.weight, config.position_scale)
    return model.train()


def _continuous_bridge(fields: dict[str, Any], d_input: int, config: ModelConfig) -> Any:
    """``boot_native`` for a `ContinuousNativeModel`: the native initialisation (the input
    projection gets the embedding's), the input projection and readout re-initialised as
    ``config`` asks, then the bridge around it."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources import build_bridge_from_module
    from transformer_lens.model_bridge.sources.native import initialize_native_model

    from workbench.parametrisation import init_linear

    cfg = TransformerBridgeConfig.from_dict(fields)
    with torch.random.fork_rng(devices=[]):
        model = _continuous_class()(cfg)
        initialize_native_model(model, cfg)  # seeded by cfg.seed
    embedding = model.tok_embed  # nn.Embedding(d_input, d_model), initialised
    model.tok_embed = LinearInput(d_input, cfg.d_model)
    with torch.no_grad():
        model.tok_embed.weight.copy_(embedding.weight)
    generator = torch.Generator().manual_seed(fields["seed"])
    if config.input_init != "transformer_lens":
        tok_embed = model.tok_embed
        init_linear(tok_embed.weight, tok_embed.bias, config.input_init, d_input, generator)
    if config.readout_init != "transformer_lens":
        head = model.head  # nn.Linear(d_model, d_output)
        init_linear(head.weight, head.bias, config.readout_init, cfg.d_model, generator)
    return build_bridge_from_module(
        model, architecture="TransformerLensNative", tl_config=cfg, model_name="native"
    )


@functools.cache
def _continuous_class() -> type:
    """``ContinuousNativeModel``, defined on first use (it subclasses TL's ``NativeModel``)."""
    from transformer_lens.model_bridge.sources.native import NativeModel

    class ContinuousNativeModel(NativeModel):
        """A TL-native model on vectors: the bridge passes float inputs ``[batch, pos, d_input]``
        as ``inputs_embeds``; ``tok_embed`` (a `LinearInput` behind the bridge's ``embed``, so
        ``hook_embed`` fires) projects them to ``d_model``; ``head`` returns ``[batch,
        pos, d_output]``. Padding masks are not supported."""

        def forward(
            self,
            input_ids: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None,
            inputs_embeds: torch.Tensor | None = None,
            **kwargs: Any,
        ) -> torch.Tensor:
            if attention_mask is not None:
                raise NotImplementedError("ContinuousNativeModel does not support attention_mask")
            inputs = inputs_embeds if input_ids is None else input_ids
            d_input = self.cfg.d_vocab
            if inputs is None or inputs.dim() != 3 or inputs.shape[-1] != d_input:
                shape = None if inputs is None else tuple(inputs.shape)
                raise ValueError(f"expected float inputs [batch, pos, {d_input}], got {shape}")
            return super().forward(
                inputs_embeds=self.tok_embed(inputs), position_ids=position_ids, **kwargs
            )

    # picklable as workbench.bridge.ContinuousNativeModel
    ContinuousNativeModel.__module__ = __name__
    ContinuousNativeModel.__qualname__ = "ContinuousNativeModel"
    return ContinuousNativeModel


def __getattr__(name: str) -> Any:
    if name == "ContinuousNativeModel":
        return _continuous_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_continuous_bridge(model: nn.Module) -> bool:
    """True for a bridge around a `ContinuousNativeModel` (checked by class name)."""
    original = model.__dict__.get("original_model")
    return any(cls.__name__ == "ContinuousNativeModel" for cls in type(original).__mro__)


# ---------------------------------------------------------------------------- weight mapping
def hooked_to_bridge_state_dict(hooked: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a ``HookedTransformer`` (or `workbench.models.ContinuousTransformer`) as the
    state dict of the TL-native bridge of the same architecture (`build_bridge`): load it with
    ``bridge.load_state_dict(...)`` (strict). Rotary query / key dimensions are permuted from
    halves to adjacent pairs unless ``cfg.rotary_adjacent_pairs``; grouped-query attention and
    gated MLPs are not mapped (``NotImplementedError``)."""
    import einops

    cfg = hooked.cfg
    if cfg.n_key_value_heads is not None or cfg.gated_mlp:
        raise NotImplementedError("grouped-query attention and gated MLPs are not mapped")
    source = hooked.state_dict()
    order = _rotary_order(cfg)
    out: dict[str, torch.Tensor] = {}
    if "embed.W_E" in source:
        out["embed.weight"] = source["embed.W_E"]
    else:  # continuous: LinearEmbed -> LinearInput
        out["embed.weight"], out["embed.bias"] = source["embed.W_in"], source["embed.b_in"]
    if "pos_embed.W_pos" in source:
        out["pos_embed.weight"] = source["pos_embed.W_pos"]
    if cfg.normalization_type not in (None, "LN"):
        raise NotImplementedError(f"normalization_type {cfg.normalization_type!r} is not mapped")
    norms = [] if cfg.normalization_type is None else ["ln1"] + ([] if cfg.attn_only else ["ln2"])
    for layer in range(cfg.n_layers):
        block = f"blocks.{layer}."  # the same prefix in both models
        for name in "QKV":
            weight, bias = source[f"{block}attn.W_{name}"], source[f"{block}attn.b_{name}"]
            if name != "V" and order is not None:  # [heads, d_model, d_head], [heads, d_head]
                weight, bias = weight[..., order], bias[..., order]
            out[f"{block}attn.{name.lower()}.weight"] = einops.rearrange(weight, "h m d -> (h d) m")
            out[f"{block}attn.{name.lower()}.bias"] = bias.flatten()
        out[f"{block}attn.o.weight"] = einops.rearrange(
            source[f"{block}attn.W_O"], "h d m -> m (h d)"
        )
        out[f"{block}attn.o.bias"] = source[f"{block}attn.b_O"]
        if not cfg.attn_only:
            out[f"{block}mlp.in.weight"] = source[f"{block}mlp.W_in"].T
            out[f"{block}mlp.in.bias"] = source[f"{block}mlp.b_in"]
            out[f"{block}mlp.out.weight"] = source[f"{block}mlp.W_out"].T
            out[f"{block}mlp.out.bias"] = source[f"{block}mlp.b_out"]
        for norm in norms:
            out[f"{block}{norm}.weight"] = source[f"{block}{norm}.w"]
            out[f"{block}{norm}.bias"] = source[f"{block}{norm}.b"]
    if norms:
        out["ln_final.weight"], out["ln_final.bias"] = source["ln_final.w"], source["ln_final.b"]
    out["unembed.weight"] = source["unembed.W_U"].T
    out["unembed.bias"] = source["unembed.b_U"]
    return {name: tensor.detach().clone().contiguous() for name, tensor in out.items()}


def _rotary_order(cfg: Any) -> torch.Tensor | None:
    """Index ``[d_head]``: bridge dimension ``j`` takes ``HookedTransformer`` dimension
    ``order[j]`` (rotary halves -> adjacent pairs); None when no permutation is needed."""
    if cfg.positional_embedding_type != "rotary" or cfg.rotary_adjacent_pairs:
        return None
    half = cfg.rotary_dim // 2
    pairs = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()
    return torch.cat([pairs, torch.arange(cfg.rotary_dim, cfg.d_head)])
