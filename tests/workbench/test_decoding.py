"""`workbench.metrics.decoding`: decoding-time fidelity against a full forward that attends
sparsely from the first decoded row on (CPU)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from test_attention import SEQ, hf_model, padding_mask, tl_model, tokens

import workbench.sparse
from kernels.layout import Layout
from kernels.reference import scaled_scores, top_k_threshold
from workbench.metrics.decoding import decode_fidelity
from workbench.metrics.fidelity import kl_divergence, model_outputs
from workbench.sparse.base import SparseMethod, visible
from workbench.sparse.patch import sparsify
from workbench.viz.fidelity import decode_fidelity_figure

NEW = 4
"""Decoded tokens: the last 4 of the 10."""


@dataclass(frozen=True, eq=False)
class TopKFromRow(SparseMethod):
    """Top-k on query rows ``>= first_row`` (token positions), every visible key before: one
    full forward under it is what a dense prefill followed by cached top-k steps computes."""

    name = "top_k_from_row"
    description = "test oracle"
    paper = ""
    input_dependent = True

    k: int = 3
    first_row: int = SEQ - NEW

    def select(self, q, k, *, causal, scale=None, block_size=64):
        scores = scaled_scores(q, k.repeat_interleave(q.shape[1] // k.shape[1], 1), scale)
        seen = visible(q, k, causal).expand_as(scores)
        threshold = top_k_threshold(scores, self.k, seen, tolerance=0.0)
        kept = seen & (scores >= threshold.unsqueeze(-1))
        kept[:, :, : self.first_row] = seen[:, :, : self.first_row]
        return Layout.from_token_mask(kept, block_q=block_size, block_k=block_size, causal=causal)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "tl-rotary", "tl-standard"])
def test_decoding_kl_equals_a_full_forward_sparse_from_the_first_decoded_row(kind: str) -> None:
    model = tl_model(kind[3:]) if kind.startswith("tl-") else hf_model(kind)
    x = tokens()
    report = decode_fidelity(
        model, x, workbench.sparse.get("top_k", k=3), new_tokens=NEW, block_size=16
    )
    with torch.no_grad():
        dense, _ = model_outputs(model, x, None)
        with sparsify(model, TopKFromRow(), block_size=16):
            hybrid, _ = model_outputs(model, x, None)
    expected = kl_divergence(dense[:, -NEW:], hybrid[:, -NEW:]).mean(0)
    observed = torch.tensor(report.kl_by_token, dtype=expected.dtype)
    torch.testing.assert_close(observed, expected, rtol=1e-4, atol=1e-7)
    assert min(report.kl_by_token) > 1e-6  # top-k with k = 3 changes the predictions
    for step, density in enumerate(report.density_by_token):  # 3 of the SEQ - NEW + 1 + step keys
        assert density == pytest.approx(3 / (SEQ - NEW + 1 + step))


@pytest.mark.parametrize("kind", ["gpt2", "tl-rotary"])
def test_a_method_that_keeps_every_key_decodes_as_the_dense_model(kind: str) -> None:
    """Left-padded batch: dense prefill and cached steps reproduce the full forward."""
    model = tl_model(kind[3:]) if kind.startswith("tl-") else hf_model(kind)
    keep_all = workbench.sparse.get("sink_window", window=SEQ)
    report = decode_fidelity(
        model, tokens(), keep_all, new_tokens=NEW, block_size=16, attention_mask=padding_mask(True)
    )
    assert max(report.kl_by_token) < 1e-9
    assert report.density_by_token == pytest.approx([1.0] * NEW)
    assert report.to_dict()["kl"] == pytest.approx(report.kl)
    figure = decode_fidelity_figure([report.to_dict()])
    assert [trace.name for trace in figure.data] == ["sink_window", "sink_window"]


def test_quest_keeps_at_most_its_pages_of_the_cache() -> None:
    quest = workbench.sparse.get("quest", page_size=2, budget=2)
    report = decode_fidelity(hf_model("gpt2"), tokens(), quest, new_tokens=NEW, block_size=16)
    for step, density in enumerate(report.density_by_token):
        assert density <= 4 / (SEQ - NEW + 1 + step) + 1e-9


def test_bad_arguments_name_themselves() -> None:
    model, x, method = hf_model("gpt2"), tokens(), workbench.sparse.get("top_k")
    for new_tokens in (0, SEQ):
        with pytest.raises(ValueError, match="new_tokens"):
            decode_fidelity(model, x, method, new_tokens=new_tokens)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        decode_fidelity(model, x, method, new_tokens=2, attention_mask=x[:, :3])
    with pytest.raises(ValueError, match="outputs logits"):
        decode_fidelity(hf_model("bert"), x, method, new_tokens=2)


def test_transformer_bridge_has_no_cache_to_decode_with() -> None:
    """The bridge's forward takes any keyword, so a cache passed to it would be ignored and each
    step would see one token: refused instead."""
    from test_bridge import models

    _, batch, _, bridge = models("tokens")
    with pytest.raises(NotImplementedError, match="no key-value cache"):
        decode_fidelity(bridge, batch.inputs, workbench.sparse.get("top_k"), new_tokens=2)
