"""Dropout inside a TransformerLens model, where the semantic-focus paper's encoder
(rithram/spartan, ``tf_model.py``, ``tf_encoder_layer.py``, ``multihead_attention.py``) applies it:
on the embedded input (token and position embeddings summed), on the attention probabilities, on
the MLP's hidden pre-activations (its ``Linear -> Dropout -> activation``), and on the attention
and MLP outputs before they join the residual stream.

TransformerLens has no dropout. `install_dropout` replaces the hook points at those places
(`DROPOUT_HOOKS`) by `DropoutHookPoint` s: hook points (same names, user hooks still fire, on the
dropped-out values) whose forward applies ``torch.nn.functional.dropout`` in training mode. Routed
attention (`workbench.attention.route_attention`) cannot go through ``hook_pattern`` when a core
computes the output itself, so `attention_dropout` tells the cores which probability dropout the
model applies in the current call (0 in eval mode).

Dropout draws from torch's default generator of the device: `workbench.train` seeds it per step
from the run's seed (`workbench.train.loop`), so runs stay deterministic and resumable.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DROPOUT_HOOKS = (
    "blocks.0.hook_resid_pre",
    "blocks.{layer}.attn.hook_pattern",
    "blocks.{layer}.mlp.hook_pre",
    "blocks.{layer}.hook_attn_out",
    "blocks.{layer}.hook_mlp_out",
)
"""Hook points replaced by `DropoutHookPoint` (per layer; MLP hooks only where there is an MLP)."""


@functools.cache
def _dropout_hook_class() -> type:
    """``DropoutHookPoint``, defined on first use (it subclasses TransformerLens' ``HookPoint``)."""
    from transformer_lens.hook_points import HookPoint

    class DropoutHookPoint(HookPoint):
        """A hook point that applies dropout with probability ``dropout_p`` in training mode
        (the identity in eval mode), before its hooks run."""

        def __init__(self, dropout_p: float) -> None:
            super().__init__()
            self.dropout_p = dropout_p

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.dropout(x, self.dropout_p, self.training)

    DropoutHookPoint.__module__ = __name__
    DropoutHookPoint.__qualname__ = "DropoutHookPoint"
    return DropoutHookPoint


def __getattr__(name: str) -> Any:
    if name == "DropoutHookPoint":
        return _dropout_hook_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install_dropout(model: nn.Module, p: float) -> None:
    """Replace the `DROPOUT_HOOKS` of a ``HookedTransformer`` by dropout hook points of
    probability ``p`` (in place; the model's hook registry is rebuilt)."""
    cls = _dropout_hook_class()
    names = [DROPOUT_HOOKS[0]] + [
        template.format(layer=layer)
        for layer in range(model.cfg.n_layers)
        for template in DROPOUT_HOOKS[1:]
    ]
    for name in names:
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if hasattr(parent, attribute):  # attention-only blocks have no MLP hooks
            setattr(parent, attribute, cls(p))
    model.setup()


def attention_dropout(module: nn.Module) -> float:
    """The dropout a routed attention ``module`` applies to its probabilities in this call: its
    `DropoutHookPoint`'s probability in training mode, else 0."""
    hook = getattr(module, "hook_pattern", None)
    return float(getattr(hook, "dropout_p", 0.0)) if module.training else 0.0
