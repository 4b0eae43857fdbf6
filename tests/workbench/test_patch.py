"""`workbench.sparse.patch.sparsify` on TransformerLens and Hugging Face models (CPU)."""

from __future__ import annotations

import pytest
import torch
from test_attention import SEQ, hf_forward, hf_model, padding_mask, tl_forward, tl_model, tokens

import workbench.sparse
from kernels.layout import Layout
from workbench.metrics.decoding import cache_keyword
from workbench.sparse.patch import detach_states, sparsify, with_key_padding

KEEP_ALL = {
    "sink_window": workbench.sparse.get("sink_window", window=SEQ),
    "block_top_k": workbench.sparse.get("block_top_k", k=64),
}


def forward(kind: str, model, x, mask):
    return (
        tl_forward(model, x, mask) if kind in ("standard", "rotary") else hf_forward(model, x, mask)
    )


def build(kind: str):
    return tl_model(kind) if kind in ("standard", "rotary") else hf_model(kind)


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("standard", "sink_window"),
        ("rotary", "block_top_k"),
        ("gpt2", "sink_window"),
        ("llama", "block_top_k"),
        ("minilm", "block_top_k"),
    ],
)
def test_keep_all_method_reproduces_dense_and_exit_restores(kind: str, method: str) -> None:
    model = build(kind)
    x = tokens()
    mask = padding_mask(left=kind != "minilm")
    with torch.no_grad():
        reference = forward(kind, model, x, mask)
        with sparsify(model, KEEP_ALL[method], block_size=16) as record:
            sparse = forward(kind, model, x, mask)
        after = forward(kind, model, x, mask)
    real = mask.bool()
    torch.testing.assert_close(sparse[real], reference[real], atol=1e-5, rtol=1e-4)
    assert torch.equal(after, reference)
    assert sorted(record.densities()) == list(range(len(record.calls)))
    assert all(density == pytest.approx(1.0) for density in record.densities().values())


def test_hooks_fire_and_a_sparse_method_changes_outputs() -> None:
    model = tl_model("rotary")
    x = torch.randint(1, 50, (2, 48), generator=torch.Generator().manual_seed(2))
    fired: list[str] = []
    hooks = [("blocks.1.attn.hook_z", lambda tensor, hook: fired.append(hook.name))]
    method = workbench.sparse.get("sink_window", sink=1, window=4)
    with torch.no_grad():
        reference = model(x)
        with (
            sparsify(model, method, layers=[1], block_size=16) as record,
            model.hooks(fwd_hooks=hooks),
        ):
            sparse = model(x)
    assert fired == ["blocks.1.attn.hook_z"]
    assert not torch.allclose(sparse, reference, atol=1e-3)
    assert [call["layer"] for call in record.calls] == [1]
    assert 0 < record.densities()[1] < 0.5
    assert 0 < record.densities("block_density")[1] <= 1


def test_heads_restrict_sparsity_to_the_chosen_heads() -> None:
    model = tl_model("standard")
    x = tokens()
    method = workbench.sparse.get("sink_window", sink=1, window=2)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter="blocks.0.attn.hook_z")
        with sparsify(model, method, layers=[0], heads=[1, 3], block_size=16):
            _, sparse_cache = model.run_with_cache(x, names_filter="blocks.0.attn.hook_z")
    dense = cache["blocks.0.attn.hook_z"]  # [batch, pos, head_index, d_head]
    sparse = sparse_cache["blocks.0.attn.hook_z"]
    torch.testing.assert_close(sparse[:, :, [0, 2]], dense[:, :, [0, 2]], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(sparse[:, :, [1, 3]], dense[:, :, [1, 3]], atol=1e-3)


def decode(model, x: torch.Tensor, mask: torch.Tensor, new: int) -> tuple[torch.Tensor, ...]:
    """``(full, decoded)`` logits of the last ``new`` tokens of ``x`` ``[batch, seq]``: from one
    forward of the whole sequence, and from a prefill of the rest followed by one cached forward
    per token (as ``generate`` runs)."""
    full = model(input_ids=x, attention_mask=mask).logits[:, -new:]
    name = cache_keyword(model)
    cache = getattr(
        model(input_ids=x[:, :-new], attention_mask=mask[:, :-new], use_cache=True), name
    )
    steps = []
    for t in range(x.shape[1] - new, x.shape[1]):
        step = model(
            input_ids=x[:, t : t + 1],
            attention_mask=mask[:, : t + 1],
            use_cache=True,
            **{name: cache},
        )
        cache = getattr(step, name)
        steps.append(step.logits[:, -1])
    return full, torch.stack(steps, dim=1)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize(
    ("name", "settings"),
    [("top_k", {"k": 3}), ("top_p", {"p": 0.7}), ("sink_window", {"sink": 1, "window": 3})],
)
def test_decoding_with_a_kv_cache_gives_each_token_its_full_forward_row(
    kind: str, name: str, settings: dict
) -> None:
    """Generating with a key-value cache (left-padded batch): a method whose selection of a row
    depends on that row alone gives each new token the logits of the full forward's row, and
    those differ from dense attention's."""
    model, x, mask = hf_model(kind), tokens(), padding_mask(left=True)
    method = workbench.sparse.get(name, **settings)
    with torch.no_grad():
        dense, _ = decode(model, x, mask, new=3)
        with sparsify(model, method, block_size=16) as record:
            full, decoded = decode(model, x, mask, new=3)
    torch.testing.assert_close(decoded, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, dense, atol=1e-3)
    queries = {call["q_len"] for call in record.calls}
    assert 1 in queries and max(queries) == SEQ  # cached calls routed, beside full forwards
    assert all(0 < call["density"] < 1 for call in record.calls if call["q_len"] == 1)


def test_quest_selects_pages_for_each_decoded_token() -> None:
    """Quest is a decoding method: a cached forward of one query keeps at most its budget of
    pages of the cached keys (2 pages of 2 keys, of the 2 x kv_len - 3 real keys of the
    batch)."""
    model, x, mask = hf_model("gpt2"), tokens(), padding_mask(left=True)
    method = workbench.sparse.get("quest", page_size=2, budget=2)
    with torch.no_grad(), sparsify(model, method, block_size=16) as record:
        decode(model, x, mask, new=2)
    decoding = [call for call in record.calls if call["q_len"] == 1]
    assert len(decoding) == 4  # 2 tokens x 2 layers
    for call in decoding:
        assert call["density"] <= 2 * 4 / (2 * call["kv_len"] - 3) + 1e-6, call


def test_cross_attention_is_refused() -> None:
    from workbench.attention import AttentionCall
    from workbench.sparse.patch import SparseCore

    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 7, 8)
    call = AttentionCall(0, q, k, k, 0.35, False, None, module=None, model_attention=None)
    with pytest.raises(NotImplementedError, match="without a causal mask"):
        SparseCore(workbench.sparse.get("top_k")).compute(call)


GENERATE = {"max_new_tokens": 4, "stop_at_eos": False, "verbose": False, "do_sample": False}


@pytest.mark.parametrize("kind", ["standard", "rotary"])
def test_transformer_lens_cache_routes_as_the_model_attends(kind: str) -> None:
    """``generate(use_past_kv_cache=True)`` under a method that keeps every key gives the tokens
    of the model's own cached generation (TL's cache is appended to as TL does)."""
    model, prompt = tl_model(kind), tokens()[:, :6]
    with torch.no_grad():
        dense = model.generate(prompt, use_past_kv_cache=True, **GENERATE)
        with sparsify(model, KEEP_ALL["sink_window"], block_size=16) as record:
            routed = model.generate(prompt, use_past_kv_cache=True, **GENERATE)
    assert torch.equal(routed, dense)
    assert {call["q_len"] for call in record.calls} == {1, 6}


def test_transformer_lens_generates_with_its_cache_as_without() -> None:
    """Under a row-wise method (top-k) TL's cached generation equals generating without the
    cache (every step a full forward; rotary positions, where TL's own two paths agree), and its
    logits differ from dense attention's."""
    model, prompt = tl_model("rotary"), tokens()[:, :6]
    with torch.no_grad():
        with sparsify(model, workbench.sparse.get("top_k", k=2), block_size=16):
            cached = model.generate(prompt, use_past_kv_cache=True, **GENERATE)
            uncached = model.generate(prompt, use_past_kv_cache=False, **GENERATE)
            logits = model(cached)
        dense_logits = model(cached)
    assert torch.equal(cached, uncached)
    assert not torch.allclose(logits, dense_logits, atol=1e-3)


@pytest.mark.parametrize("kind", ["standard", "rotary"])
@pytest.mark.parametrize("name", ["top_k", "delta", "nsa"])
def test_padded_batch_gives_each_example_its_unpadded_output(kind: str, name: str) -> None:
    """Left-padded decoders: the padded example's real tokens get exactly the logits the example
    gets alone, also for a correction (delta) and pooled branches (NSA)."""
    model, x, mask = tl_model(kind), tokens(), padding_mask(left=True)
    with torch.no_grad(), sparsify(model, workbench.sparse.get(name), block_size=16):
        padded = tl_forward(model, x, mask)
        alone = model(x[1:2, 3:])
    torch.testing.assert_close(padded[1, 3:], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", workbench.sparse.names())
def test_needs_calibration_says_whether_sparsify_can_install_the_method(name: str) -> None:
    """Every method runs inside `sparsify` as registered, except those that say they must be
    calibrated first (`workbench sparsify-eval` leaves those out of its default list)."""
    model = tl_model("standard")
    method = workbench.sparse.get(name)
    with torch.no_grad(), sparsify(model, method, block_size=16):
        if method.needs_calibration:
            with pytest.raises(ValueError, match="calibrated"):
                model(tokens())
        else:
            assert torch.isfinite(model(tokens())).all()


def test_with_key_padding_ands_token_masks_and_keeps_thresholds() -> None:
    padding = torch.tensor([[True] * 20, [False] * 4 + [True] * 16])  # [batch, kv_len]
    own = torch.rand(1, 2, 20, 20, generator=torch.Generator().manual_seed(0)) < 0.5
    masked = with_key_padding(Layout.from_token_mask(own, block_q=16, block_k=16), padding)
    assert torch.equal(masked.to_dense(), own.expand(2, 2, 20, 20) & padding[:, None, None, :])
    scores = torch.randn(1, 2, 20, 20, generator=torch.Generator().manual_seed(1))
    threshold = torch.zeros(1, 2, 20)
    layout = Layout.from_row_threshold(scores, threshold, block_q=16, block_k=16)
    masked = with_key_padding(layout, padding)
    assert torch.equal(masked.row_threshold, threshold.expand(2, 2, 20))
    expected = (scores >= 0) & padding[:, None, None, :]
    assert torch.equal(masked.to_dense(scores.expand(2, 2, 20, 20)), expected)
    assert with_key_padding(layout, None) is layout


def test_sparsify_attaches_the_state_and_restores_the_model_bitwise():
    model = tl_model("standard")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    x = tokens()
    with torch.no_grad():
        reference = model(x)
    method = workbench.sparse.get("nsa", window=4)
    with sparsify(model, method, layers=[1], block_size=16) as record:
        names = [name for name in model.state_dict() if "sparse_state" in name]
        assert names and all(name.startswith("blocks.1.attn.sparse_state.") for name in names)
        assert set(map(id, record.states[1].parameters())) <= set(map(id, model.parameters()))
        loss = model(x).sum()
        loss.backward()
        assert record.states[1].gate_bias.grad is not None
    model.zero_grad(set_to_none=True)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[name], value) for name, value in before.items())
    with torch.no_grad():
        assert torch.equal(model(x), reference)
    with sparsify(model, method, layers=[1], keep_state=True) as record:
        kept = record.states[1]
    assert model.blocks[1].attn.sparse_state is kept
    with sparsify(model, method, layers=[1]) as record:
        assert record.states[1] is kept  # reused, and still kept afterwards
    assert model.blocks[1].attn.sparse_state is kept
    with (
        pytest.raises(ValueError, match="already holds the state of 'nsa'"),
        sparsify(model, workbench.sparse.get("hax"), layers=[1]),
    ):
        pass
    with sparsify(model, workbench.sparse.get("top_k"), layers=[1], block_size=16):
        pass  # a method without a state ignores it
    detach_states(model, [1])  # the model is shared with other tests
    assert "sparse_state" not in model.blocks[1].attn._modules


@pytest.mark.parametrize("kind", ["tl", "hf"])
def test_nested_routes_are_refused_and_say_what_to_do(kind: str) -> None:
    """A `sparsify` block inside a `tracing` block would route the same attention twice (on a
    TransformerLens model the inner route would silently replace the tracer's): refused, naming
    the tracer's own ``sparse=`` argument; the outer block still works afterwards."""
    from workbench.trace import TraceConfig, tracing

    model = tl_model("standard") if kind == "tl" else hf_model("gpt2")
    x = tokens()
    with torch.no_grad(), tracing(model, TraceConfig(ps=())) as recorder:
        with (
            pytest.raises(RuntimeError, match=r"already routed.*tracing\(model, config, sparse="),
            sparsify(model, workbench.sparse.get("top_k")),
        ):
            pass
        forward("standard" if kind == "tl" else "gpt2", model, x, None)
    assert recorder.trace().stats[0]["entropy"].shape[-1] == SEQ
