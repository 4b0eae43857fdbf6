"""Fidelity of a sparse method at decoding time: dense prefill, then one cached step per token.

Methods such as Quest select keys for each new token against the key-value cache. ``decode_
fidelity(model, tokens, method, new_tokens=N)`` runs the model as it generates, teacher-forced on
``tokens``: the first ``pos - N`` tokens are prefilled with dense attention (the cache holds dense
keys and values, as these methods assume), then each of the last ``N`` tokens is one cached
forward with the method installed (`workbench.sparse.patch.sparsify`: the method selects among
every cached key). Each step's next-token distribution is compared with the dense model's at the
same position (one dense forward of the whole sequence): ``KL(dense || sparse)`` per decoded
token, and the fraction of the cached keys the method kept at that step (mean over layers).

Models: Hugging Face decoders (their key-value cache, `cache_keyword`) and TransformerLens
``HookedTransformer`` (its ``TransformerLensKeyValueCache``). Shapes: ``tokens`` and
``attention_mask`` ``[batch, pos]`` (left padding, as decoders generate).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from kernels.api import Impl
from toy_tasks.base import check_int
from workbench.attention import is_transformer_bridge, is_transformer_lens
from workbench.metrics.fidelity import kl_divergence, model_outputs
from workbench.sparse.base import SparseMethod
from workbench.sparse.patch import sparsify

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(token [batch, 1], attention mask [batch, 1]) -> next-token logits [batch, vocab]``: one
cached forward."""


@dataclass(frozen=True)
class DecodeFidelity:
    """Decoding-time fidelity of one method (see the module docstring).

    Attributes:
        method: the method's name; ``hyper_parameters`` its settings.
        kl_by_token: mean over the batch's real examples of ``KL(dense || sparse)`` of each decoded
            token's next-token distribution, in decoding order.
        density_by_token: fraction of the visible cached keys kept at each step (mean over the
            routed layers).
        kl: mean of ``kl_by_token``.
    """

    method: str
    hyper_parameters: dict[str, Any]
    kl_by_token: list[float]
    density_by_token: list[float]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def kl(self) -> float:
        return sum(self.kl_by_token) / len(self.kl_by_token)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready) with the mean KL."""
        return {**asdict(self), "kl": self.kl}


def cache_keyword(model: nn.Module) -> str:
    """The name of a Hugging Face model's key-value cache, in its ``forward`` and its outputs:
    ``cache`` (transformers 5), else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prefill(model: nn.Module, tokens: torch.Tensor, attention_mask: torch.Tensor) -> Step:
    """A forward of ``tokens`` ``[batch, pos]`` with a key-value cache (dense, as the caller runs
    it), and the `Step` that continues it one token at a time."""
    if is_transformer_bridge(model):  # its forward would swallow past_kv_cache unused
        raise NotImplementedError(
            "decode_fidelity: TransformerBridge models of TL-native attention have no key-value "
            "cache; use the HookedTransformer (or a Hugging Face decoder)"
        )
    if is_transformer_lens(model):
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(tokens))
        model(tokens, attention_mask=attention_mask, past_kv_cache=cache)

        def tl_step(token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return model(token, attention_mask=mask, past_kv_cache=cache)[:, -1]

        return tl_step
    name = cache_keyword(model)
    output = model(input_ids=tokens, attention_mask=attention_mask, use_cache=True)
    state, masks = {name: getattr(output, name)}, [attention_mask]

    def hf_step(token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        masks.append(mask)
        output = model(
            input_ids=token, attention_mask=torch.cat(masks, dim=1), use_cache=True, **state
        )
        state[name] = getattr(output, name)
        return output.logits[:, -1]

    return hf_step


@torch.no_grad()
def decode_fidelity(
    model: nn.Module,
    tokens: torch.Tensor,
    method: SparseMethod,
    *,
    new_tokens: int,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    block_size: int = 64,
    attention_mask: torch.Tensor | None = None,
    impl: Impl = "auto",
) -> DecodeFidelity:
    """Decode the last ``new_tokens`` of ``tokens`` ``[batch, pos]`` with ``method`` installed in
    ``layers`` / ``heads`` (None = all) after a dense prefill of the others, against the dense
    model (see the module docstring). ``attention_mask`` ``[batch, pos]`` (1 = real token; left
    padding)."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [batch, pos] token ids, got {tuple(tokens.shape)}")
    check_int("new_tokens", new_tokens, 1, tokens.shape[1] - 1)
    mask = torch.ones_like(tokens) if attention_mask is None else attention_mask.to(tokens.device)
    if mask.shape != tokens.shape:
        raise ValueError(
            f"attention_mask must have the shape of tokens {tuple(tokens.shape)}, got "
            f"{tuple(mask.shape)}"
        )
    dense, logits = model_outputs(model, tokens, mask)
    if not logits:
        raise ValueError(f"decode_fidelity needs a model that outputs logits ({type(model)})")
    prompt = tokens.shape[1] - new_tokens
    options = {"layers": layers, "heads": heads, "block_size": block_size, "impl": impl}
    sparse, densities = [], []
    step = prefill(model, tokens[:, :prompt], mask[:, :prompt])  # dense: before the method
    with sparsify(model, method, **options) as record:
        for position in range(prompt, tokens.shape[1]):
            record.calls.clear()
            token = slice(position, position + 1)
            sparse.append(step(tokens[:, token], mask[:, token]))
            densities.append(sum(c["density"] for c in record.calls) / len(record.calls))
    # [batch, new_tokens]: each decoded token's next-token distribution, dense forward's and ours
    kl = kl_divergence(dense[:, prompt:], torch.stack(sparse, dim=1))
    real = mask[:, prompt:].bool()
    kl_by_token = [kl[real[:, t], t].mean().item() for t in range(new_tokens)]
    return DecodeFidelity(
        method=method.name,
        hyper_parameters=method.hyper_parameters(),
        kl_by_token=kl_by_token,
        density_by_token=densities,
        settings={"new_tokens": new_tokens, **{k: v for k, v in options.items() if k != "impl"}},
    )
