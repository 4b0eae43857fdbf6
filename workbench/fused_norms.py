"""TransformerLens LayerNorms computed by one fused operation when nothing hooks their scale.

TransformerLens writes its ``LayerNorm`` and ``LayerNormPre`` out of elementary operations (centre,
square, mean, add eps, square root, divide; then scale and shift), so that ``hook_scale`` can show
and replace the normalisation scale. That costs ~7 operations forward and ~22 with their backward
per call, each a kernel launch on a GPU: with 20 calls a step (TransformerLens normalises a block's
query, key and value inputs apart) they are more than half of a small semantic-focus model's
training step (`bench/train_step_ops.py`), whose step rate the launches limit.
`install_fused_layer_norms` turns the model's norms into `FusedLayerNorm` / `FusedLayerNormPre`
(subclasses that only override ``forward``): the same parameters (same names, so checkpoints load
either way) and the same hook points. While ``hook_scale`` has no hook and the model computes in
float32 or float64, the forward is ``torch.nn.functional.layer_norm`` (one operation, one for its
backward; ``LayerNorm`` then scales and shifts in one more), and ``hook_normalized`` fires where it
always did. A hook on ``hook_scale`` (``run_with_cache`` adds one to every hook point) switches
that norm back to TransformerLens' own computation, so hooks that read or replace the scale see
what they always did. Both compute ``(x - mean) / sqrt(var + eps)`` with the biased variance; they
differ by float rounding only (tested).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _fused_applies(norm: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``norm`` may take the fused path for ``x``: no hook on its ``hook_scale`` and a
    float32 / float64 model (TransformerLens upcasts other dtypes to float32 itself)."""
    hook = norm.hook_scale
    hooked = hook._forward_hooks or hook._forward_pre_hooks or hook._backward_hooks
    return (
        not hooked
        and norm.cfg.dtype in (torch.float32, torch.float64)
        and x.dtype == norm.cfg.dtype
    )


@functools.cache
def _fused_classes() -> tuple[type, type]:
    """``(FusedLayerNorm, FusedLayerNormPre)``, defined on first use (they subclass
    TransformerLens' norms, imported lazily)."""
    from transformer_lens.components import LayerNorm, LayerNormPre

    class FusedLayerNorm(LayerNorm):
        """TransformerLens' ``LayerNorm`` (scale ``w``, shift ``b`` after ``hook_normalized``),
        fused while unhooked."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """``x [..., length]`` -> normalised, scaled and shifted ``[..., length]``."""
            if not _fused_applies(self, x):
                return super().forward(x)
            normalized = self.hook_normalized(F.layer_norm(x, x.shape[-1:], eps=self.eps))
            return torch.addcmul(self.b, normalized, self.w)

    class FusedLayerNormPre(LayerNormPre):
        """TransformerLens' ``LayerNormPre`` (no parameters), fused while unhooked."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """``x [..., length]`` -> normalised ``[..., length]``."""
            if not _fused_applies(self, x):
                return super().forward(x)
            return self.hook_normalized(F.layer_norm(x, x.shape[-1:], eps=self.eps))

    for cls in (FusedLayerNorm, FusedLayerNormPre):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__  # picklable by name
    return FusedLayerNorm, FusedLayerNormPre


def __getattr__(name: str) -> Any:
    fused_names = ("FusedLayerNorm", "FusedLayerNormPre")
    if name in fused_names:
        return _fused_classes()[fused_names.index(name)]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install_fused_layer_norms(model: nn.Module) -> int:
    """Make every TransformerLens ``LayerNorm`` / ``LayerNormPre`` of ``model`` (a
    ``HookedTransformer`` or subclass) its fused counterpart, in place: the modules keep their
    identity, parameters, hook points and any hooks already attached (only their class changes,
    as ``torch.nn.utils.parametrize`` does); returns how many were changed."""
    from transformer_lens.components import LayerNorm, LayerNormPre

    fused = dict(zip((LayerNorm, LayerNormPre), _fused_classes(), strict=True))
    norms = [module for module in model.modules() if type(module) in fused]
    for module in norms:
        module.__class__ = fused[type(module)]
    return len(norms)
