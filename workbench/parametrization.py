"""The semantic-focus paper's parametrisation of its encoder (rithram/spartan, ``tf_model.py`` and
PyTorch's ``nn.Linear`` defaults), applied to a TransformerLens model
(``ModelConfig(parametrization="semantic_focus")``):

* token embeddings drawn uniformly in ``[-0.1, 0.1]`` and multiplied by ``sqrt(d_model)`` in the
  forward (`ScaledEmbed`): with SGD the multiplier is not the same as a larger initialisation;
* every linear map (q, k, v, output projection, the two MLP layers) as ``nn.Linear`` initialises
  it: weights and biases uniform in ``+-1 / sqrt(fan_in)`` (Kaiming-uniform with ``a = sqrt(5)``);
* the readout (TL's unembedding, or a classifier's) uniform in ``[-0.1, 0.1]`` with a zero bias.

TransformerLens' own initialisation is normal with std ``0.8 / sqrt(d_model)`` and zero biases.
"""

from __future__ import annotations

import math

import torch
from torch import nn

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
                _linear_init(weight, bias, fan_in=d_model)
            _linear_init(attn.W_O, attn.b_O, fan_in=heads * d_head)
            if hasattr(block, "mlp"):
                _linear_init(block.mlp.W_in, block.mlp.b_in, fan_in=d_model)
                _linear_init(block.mlp.W_out, block.mlp.b_out, fan_in=block.mlp.W_in.shape[1])
        model.unembed.W_U.uniform_(-EMBEDDING_RANGE, EMBEDDING_RANGE)
        model.unembed.b_U.zero_()
    model.setup()


def _linear_init(weight: torch.Tensor, bias: torch.Tensor, *, fan_in: int) -> None:
    """``nn.Linear``'s default: weight and bias uniform in ``+-1 / sqrt(fan_in)``."""
    bound = 1.0 / math.sqrt(fan_in)
    weight.uniform_(-bound, bound)
    bias.uniform_(-bound, bound)
