"""The parametrisation of a toy model's front and back ends: how the input projection and the
readout of a continuous-input model are initialised, and how strongly absolute positions enter the
residual stream (`workbench.models.ModelConfig`'s ``input_init``, ``readout_init`` and
``position_scale``).

Why it matters (Zucchet et al., arXiv 2505.17863): the single-location task's tokens have norm ~1
(``x ~ N(0, I/d)``). TransformerLens initialises every weight with ``N(0, 0.8 / sqrt(d_model))``
(0.05 at width 256), so the projected content has norm ~0.8 while a unit-amplitude sinusoidal
position has norm ``sqrt(d_model / 2)`` (11.3): positions outweigh content ~14:1 and emergence took
3-12x the paper's fitted times. A fan-in initialisation (std ``1 / sqrt(d_input)``, the scale of
JAX/Flax's and PyTorch's dense layers) gives content norm ``sqrt(d_model / d_input)`` (3.9 for
d = 16) and brought the times to 1.3-2x the paper's.

Schemes (weights ``[fan_in, fan_out]`` or ``[fan_out, fan_in]``; biases ``[fan_out]``):

* ``"fan_in"``: weights ``N(0, 1 / fan_in)``, bias 0 (LeCun normal: Flax ``nn.Dense``'s default,
  without its truncation). The default: what the emergence paper's JAX models start from as far
  as its text says (a dense layer in, a dense layer out); its code is not published.
* ``"torch_linear"``: weights and bias ``U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))``, PyTorch
  ``nn.Linear``'s default: Garg et al.'s ``_read_in`` / ``_read_out`` (dtsip/in-context-learning,
  ``src/models.py``).
* ``"zero"`` (readout only): weights and bias 0, so the model starts by predicting 0 (the zero
  predictor's loss, the emergence paper's reference).
* ``"transformer_lens"``: the library's own initialisation, as before these options existed
  (``HookedTransformer``: ``N(0, initializer_range)``, bias 0; the ``TransformerBridge``:
  TL-native's ``N(0, 0.8 / sqrt(d_model))`` of its embedding and unembedding).

``position_scale`` multiplies the fixed sinusoidal table (amplitude 1 at 1.0, Vaswani et al.) or
the initial learned position table; rotary positions take only 1.0.

The semantic-focus paper's parametrisation of its encoder (rithram/spartan, ``tf_model.py`` and
PyTorch's ``nn.Linear`` defaults), applied to a token-input TransformerLens model
(``ModelConfig(parametrization="semantic_focus")``, `apply_semantic_focus_parametrization`):

* token embeddings drawn uniformly in ``[-0.1, 0.1]`` and multiplied by ``sqrt(d_model)`` in the
  forward (`ScaledEmbed`): with SGD the multiplier is not the same as a larger initialisation;
* every linear map (q, k, v, output projection, the two MLP layers) as ``nn.Linear`` initialises
  it (``"torch_linear"`` above);
* the readout (TL's unembedding, or a classifier's) uniform in ``[-0.1, 0.1]`` with a zero bias.
"""

from __future__ import annotations

import math

import torch
from torch import nn

INPUT_INITS = ("fan_in", "torch_linear", "transformer_lens")
READOUT_INITS = ("fan_in", "torch_linear", "zero", "transformer_lens")
DEFAULT_INPUT_INIT = "fan_in"
DEFAULT_READOUT_INIT = "fan_in"
MAX_POSITION_SCALE = 1e3
"""Largest ``position_scale``: far beyond any use (positions then swamp the content)."""


def init_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scheme: str,
    fan_in: int,
    generator: torch.Generator | None = None,
) -> None:
    """Initialise a linear map's ``weight`` (any layout) and ``bias`` in place with ``scheme``
    (``"fan_in"``, ``"torch_linear"`` or ``"zero"``; ``"transformer_lens"`` is the caller's: it
    keeps the library's weights), drawing from ``generator`` (None: the global generator)."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        if scheme == "fan_in":
            weight.normal_(0.0, bound, generator=generator)
            if bias is not None:
                bias.zero_()
        elif scheme == "torch_linear":
            weight.uniform_(-bound, bound, generator=generator)
            if bias is not None:
                bias.uniform_(-bound, bound, generator=generator)
        elif scheme == "zero":
            weight.zero_()
            if bias is not None:
                bias.zero_()
        else:
            raise ValueError(f"init_linear has no scheme {scheme!r}")


def scale_positions(table: torch.Tensor, scale: float) -> None:
    """Multiply a position table ``[n_ctx, d_model]`` (parameter or buffer) by ``scale`` in place
    (nothing at 1.0: the weights stay bitwise those of the library)."""
    if scale != 1.0:
        with torch.no_grad():
            table.mul_(scale)


EMBEDDING_RANGE = 0.1
"""Half-width of the uniform embedding and readout initialisation (spartan's ``initrange``)."""


class ScaledEmbed(nn.Module):
    """Token embedding ``W_E[tokens] * scale``: ``[batch, pos]`` -> ``[batch, pos, d_model]``."""

    def __init__(self, d_vocab: int, d_model: int, scale: float) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(d_vocab, d_model))
        self.scale = scale

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.W_E[tokens, :] * self.scale


def apply_semantic_focus_parametrization(model: nn.Module) -> None:
    """Re-initialise a token-input ``HookedTransformer`` (or a `workbench.classifier` model) in
    place as the module docstring says, from torch's default generator (`workbench.models.
    build_model` seeds it), and replace its embedding by a `ScaledEmbed`."""
    d_vocab, d_model = model.embed.W_E.shape
    model.embed = ScaledEmbed(d_vocab, d_model, math.sqrt(d_model))
    with torch.no_grad():
        model.embed.W_E.uniform_(-EMBEDDING_RANGE, EMBEDDING_RANGE)
        for block in model.blocks:
            attn = block.attn
            heads, _, d_head = attn.W_Q.shape
            for weight, bias in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V)):
                init_linear(weight, bias, "torch_linear", d_model)
            init_linear(attn.W_O, attn.b_O, "torch_linear", heads * d_head)
            if hasattr(block, "mlp"):
                init_linear(block.mlp.W_in, block.mlp.b_in, "torch_linear", d_model)
                init_linear(
                    block.mlp.W_out, block.mlp.b_out, "torch_linear", block.mlp.W_in.shape[1]
                )
        model.unembed.W_U.uniform_(-EMBEDDING_RANGE, EMBEDDING_RANGE)
        model.unembed.b_U.zero_()
    model.setup()
