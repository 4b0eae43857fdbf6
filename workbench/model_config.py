"""The architecture of a toy model (`ModelConfig`), validated on construction: a bad field raises
``ValueError`` naming it and its allowed range. `workbench.models` builds it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from toy_tasks.base import TORCH_SEED_MAX, check_float, check_int
from workbench.parametrisation import (
    DEFAULT_INPUT_INIT,
    DEFAULT_READOUT_INIT,
    INPUT_INITS,
    MAX_POSITION_SCALE,
    READOUT_INITS,
)

POSITIONALS = ("standard", "sinusoidal", "rotary")
NORMALIZATIONS = ("LN", "LNPre", None)
ATTENTIONS = ("causal", "bidirectional")
PARAMETRIZATIONS = ("transformer_lens", "semantic_focus")
ACT_FNS = ("relu", "gelu", "gelu_new", "gelu_fast", "silu")
BACKENDS = ("hooked", "bridge")
BRIDGE_ACT_FNS = ("relu", "gelu", "gelu_new", "silu")
"""The `ACT_FNS` of TransformerLens' native models (``backend="bridge"``)."""


def check_known_fields(cls: type, data: Mapping[str, Any], name: str | None = None) -> None:
    """Raise ``ValueError`` naming the keys of ``data`` that are no field of dataclass ``cls``, or
    the fields without a default it lacks (``name``: how the message calls the mapping, default the
    class name)."""
    label = name or cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{label} must be a mapping of field names to values, got {data!r}")
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {label} fields {unknown}; known: {sorted(known)}")
    required = [
        field.name
        for field in dataclasses.fields(cls)
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise ValueError(f"{label} needs the fields {missing}, got {dict(data)!r}")


OMITTED_DEFAULTS = {
    "backend": "hooked",
    "attention": "causal",
    "dropout": 0.0,
    "parametrization": "transformer_lens",
    "input_init": DEFAULT_INPUT_INIT,
    "readout_init": DEFAULT_READOUT_INIT,
    "position_scale": 1.0,
}
"""Fields `ModelConfig.to_dict` leaves out at these values (added after configs were hashed)."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a toy-task transformer (the sizes of the task come from the task).

    Attributes:
        n_layers: number of transformer blocks.
        d_model: residual stream width.
        n_heads: attention heads per layer.
        d_head: query / key / value dimension per head.
        d_mlp: MLP hidden width (None = ``4 * d_model``); unused when ``attn_only``.
        act_fn: MLP activation, one of `ACT_FNS`.
        positional: ``"standard"`` (learned absolute), ``"sinusoidal"`` (fixed absolute, Vaswani
            et al.; not trained) or ``"rotary"``.
        normalization: ``"LN"`` (pre-LayerNorm), ``"LNPre"`` (pre-LayerNorm without the affine
            weights, as the semantic-focus paper's encoder) or None (no normalisation, as in the
            emergence paper's transformer).
        attn_only: blocks without MLPs.
        seed: seed of the weight initialisation (None: 0 here; `workbench.train` uses its own
            seed).
        backend: ``"hooked"`` (TransformerLens ``HookedTransformer``) or ``"bridge"``
            (``TransformerBridge``, `workbench.bridge`; ``act_fn`` one of `BRIDGE_ACT_FNS`).
        attention: ``"causal"`` (decoders) or ``"bidirectional"`` (encoders, e.g. the
            semantic-focus paper's classifiers); needs backend ``"hooked"`` away from causal.
        dropout: dropout probability in ``[0, 1)`` where the semantic-focus paper applies it
            (`workbench.dropout`, attention probabilities included); hooked backend only.
        parametrization: ``"transformer_lens"`` (the library's initialisation) or
            ``"semantic_focus"`` (the paper's, `workbench.parametrisation`); hooked only.
        input_init: initialisation of the input projection of continuous-input models, one of
            `INPUT_INITS` (`workbench.parametrisation`): ``"fan_in"`` (the default,
            ``N(0, 1 / d_input)``), ``"torch_linear"`` (Garg et al.'s ``nn.Linear``) or
            ``"transformer_lens"`` (the library's, as before the option existed). Token models
            embed with TransformerLens' table and take only the default.
        readout_init: initialisation of the linear readout of continuous-input models, one of
            `READOUT_INITS`: ``"fan_in"`` (the default, ``N(0, 1 / d_model)``),
            ``"torch_linear"``, ``"zero"`` or ``"transformer_lens"``; token models take only
            the default.
        position_scale: factor of the absolute positions (the sinusoidal table, or the initial
            learned table), in ``[0, MAX_POSITION_SCALE]``; 1.0 with rotary positions.

    `to_dict` leaves out the fields of `OMITTED_DEFAULTS` at their defaults, so configs and their
    hashes from before these fields keep their form (the committed continuous-task runs, trained
    with TransformerLens' initialisation, say so explicitly: ``docs/results/emergence_h100``).
    """

    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 16
    d_mlp: int | None = None
    act_fn: str = "relu"
    positional: Literal["standard", "sinusoidal", "rotary"] = "standard"
    normalization: Literal["LN"] | None = "LN"
    attn_only: bool = False
    seed: int | None = None
    backend: Literal["hooked", "bridge"] = "hooked"
    attention: Literal["causal", "bidirectional"] = "causal"
    dropout: float = 0.0
    parametrization: Literal["transformer_lens", "semantic_focus"] = "transformer_lens"
    input_init: Literal["fan_in", "torch_linear", "transformer_lens"] = DEFAULT_INPUT_INIT
    readout_init: Literal["fan_in", "torch_linear", "zero", "transformer_lens"] = (
        DEFAULT_READOUT_INIT
    )
    position_scale: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_int("n_layers", self.n_layers, 1)
        check_int("d_model", self.d_model, 1)
        check_int("n_heads", self.n_heads, 1)
        check_int("d_head", self.d_head, 1)
        if self.d_mlp is not None:
            check_int("d_mlp", self.d_mlp, 1)
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn must be one of {ACT_FNS}, got {self.act_fn!r}")
        if self.positional not in POSITIONALS:
            raise ValueError(f"positional must be one of {POSITIONALS}, got {self.positional!r}")
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"d_model must be even with sinusoidal positions, got {self.d_model}")
        if self.positional == "rotary" and self.d_head % 2:
            raise ValueError(f"d_head must be even with rotary positions, got {self.d_head}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if not isinstance(self.attn_only, bool):
            raise ValueError(f"attn_only must be a bool, got {self.attn_only!r}")
        if self.seed is not None:
            check_int("seed", self.seed, 0, TORCH_SEED_MAX)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "bridge" and self.act_fn not in BRIDGE_ACT_FNS:
            raise ValueError(
                f"act_fn must be one of {BRIDGE_ACT_FNS} with backend 'bridge' (TL-native MLPs), "
                f"got {self.act_fn!r}"
            )
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        check_float("dropout", self.dropout, 0.0, 1.0)
        if self.dropout == 1.0:
            raise ValueError("dropout must be in [0, 1), got 1.0")
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"parametrization must be one of {PARAMETRIZATIONS}, got {self.parametrization!r}"
            )
        if self.backend == "bridge":
            for name in HOOKED_ONLY:
                if getattr(self, name) != DEFAULTS[name]:
                    raise ValueError(
                        f"{name} must be {DEFAULTS[name]!r} with backend 'bridge', got "
                        f"{getattr(self, name)!r}"
                    )
            if self.normalization == "LNPre":
                raise ValueError("normalization 'LNPre' needs backend 'hooked'")
        if self.input_init not in INPUT_INITS:
            raise ValueError(f"input_init must be one of {INPUT_INITS}, got {self.input_init!r}")
        if self.readout_init not in READOUT_INITS:
            raise ValueError(
                f"readout_init must be one of {READOUT_INITS}, got {self.readout_init!r}"
            )
        check_float("position_scale", self.position_scale, 0.0, MAX_POSITION_SCALE)
        if self.positional == "rotary" and self.position_scale != 1.0:
            raise ValueError(
                f"position_scale must be 1.0 with rotary positions, got {self.position_scale}"
            )

    @property
    def mlp_width(self) -> int:
        return 4 * self.d_model if self.d_mlp is None else self.d_mlp

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, those added later left out at their defaults (`OMITTED_DEFAULTS`):
        hashes of older configs hold."""
        data = dataclasses.asdict(self)
        for name, default in OMITTED_DEFAULTS.items():
            if data[name] == default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        check_known_fields(cls, data)
        return cls(**data)


DEFAULTS = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
HOOKED_ONLY = ("attention", "dropout", "parametrization")
"""Fields that need ``backend="hooked"`` away from their defaults."""
