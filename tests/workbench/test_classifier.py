"""Sequence classifiers (`workbench.classifier`), bidirectional attention, dropout
(`workbench.dropout`) and the semantic-focus parametrisation (`workbench.parametrisation`)."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

import toy_tasks
import workbench.sparse
from workbench.capture import capture
from workbench.classifier import is_classifier
from workbench.models import ModelConfig, build_model, check_compatible
from workbench.parametrisation import ScaledEmbed
from workbench.runs import read_metrics
from workbench.sparse.patch import sparsify
from workbench.trace import TraceConfig, trace, tracing
from workbench.train import TrainConfig, train

TASK = toy_tasks.get("cycle_navigation", length=10)
ENCODER = ModelConfig(
    n_layers=2,
    d_model=16,
    n_heads=2,
    d_head=8,
    d_mlp=16,
    positional="sinusoidal",
    normalization="LNPre",
    attention="bidirectional",
    seed=0,
)


def tokens(n: int = 3, task: toy_tasks.ToyTask = TASK) -> torch.Tensor:
    return task.sample(n, torch.Generator().manual_seed(0)).inputs


def test_classifier_pools_the_last_layer_and_reads_out_the_classes() -> None:
    model = build_model(TASK, ENCODER).eval()
    assert is_classifier(model) and not hasattr(model, "ln_final")
    check_compatible(model, TASK)
    x = tokens()
    logits, cache = model.run_with_cache(x)
    assert logits.shape == (3, 5) and model.cfg.d_vocab_out == TASK.n_classes
    pooled = cache["blocks.1.hook_resid_post"].mean(dim=1)
    torch.testing.assert_close(cache["hook_pooled"], pooled)
    torch.testing.assert_close(logits, pooled @ model.unembed.W_U + model.unembed.b_U)
    residual = model.input_to_embed(x)[0]
    torch.testing.assert_close(model(residual, start_at_layer=0), logits)
    torch.testing.assert_close(pickle.loads(pickle.dumps(model))(x), logits)
    with pytest.raises(NotImplementedError, match="return_type"):
        model(x, return_type="loss")


def test_encoder_patterns_equal_transformer_lens_own_and_see_the_future() -> None:
    """Routed attention of a non-causal model: the captured q / k give TransformerLens' own
    bidirectional pattern, and attention through the kernels reproduces its outputs."""
    model = build_model(TASK, ENCODER).eval()
    x = tokens()
    with torch.no_grad():
        reference, cache = model.run_with_cache(x)
        result = trace(model, x, TraceConfig(patterns=True))
        captured = capture(model, x, attention="kernels")
        with tracing(model, TraceConfig(attention="kernels")):
            through_kernels = model(x)
    later = torch.ones(10, 10, dtype=torch.bool).triu(diagonal=1)
    for layer in (0, 1):
        own = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert own[..., later].gt(0).all(), "an encoder attends to later positions"
        torch.testing.assert_close(result.patterns[layer], own)
        assert not captured[layer].causal
        torch.testing.assert_close(captured[layer].weights(), own, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(through_kernels, reference, atol=1e-5, rtol=1e-4)
    causal = build_model(TASK, ENCODER.replace(attention="causal")).eval()
    _, causal_cache = causal.run_with_cache(x)
    assert causal_cache["blocks.0.attn.hook_pattern"][..., later].eq(0).all()


def test_dropout_where_the_paper_applies_it_and_only_in_training() -> None:
    model = build_model(TASK, ENCODER.replace(dropout=0.5))
    plain = build_model(TASK, ENCODER)
    names = {name for name, hook in model.hook_dict.items() if hasattr(hook, "dropout_p")}
    assert names == {
        "blocks.0.hook_resid_pre",
        *(f"blocks.{i}.{name}" for i in (0, 1) for name in ("attn.hook_pattern", "mlp.hook_pre")),
        *(f"blocks.{i}.{name}" for i in (0, 1) for name in ("hook_attn_out", "hook_mlp_out")),
    }
    x = tokens()
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))  # same weights, no dropout
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        first, second = model(x), model(x)
    assert not torch.allclose(first, second)
    _, cache = model.run_with_cache(x)
    pattern = cache["blocks.0.attn.hook_pattern"]  # hooks see the dropped-out probabilities
    assert (pattern == 0).any() and not torch.allclose(pattern.sum(-1), torch.ones(3, 2, 10))


def test_sparse_attention_applies_the_same_attention_dropout_as_the_model() -> None:
    """In training, a routed layer drops out the probabilities as TransformerLens' own attention
    does: with every key kept and the same generator state, the outputs agree."""
    model = build_model(TASK, ENCODER.replace(dropout=0.3)).train()
    x = tokens()
    keep_all = workbench.sparse.get("top_k", k=TASK.seq_len)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        own = model(x)
        torch.manual_seed(1)
        with sparsify(model, keep_all, block_size=16):
            routed = model(x)
        torch.manual_seed(2)
        with sparsify(model, keep_all, block_size=16):
            other = model(x)
    torch.testing.assert_close(routed, own, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(other, own)
    triton = sparsify(model, keep_all, block_size=16, impl="triton")
    with pytest.raises(NotImplementedError, match="no attention dropout"), triton:
        model(x)


def test_semantic_focus_parametrization() -> None:
    config = ENCODER.replace(parametrization="semantic_focus", d_model=64, d_head=32, d_mlp=48)
    model = build_model(TASK, config)
    assert isinstance(model.embed, ScaledEmbed) and model.embed.scale == 8.0
    assert model.embed.W_E.abs().max() <= 0.1 and model.unembed.W_U.abs().max() <= 0.1
    assert model.unembed.b_U.eq(0).all()
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    bounds = {  # nn.Linear: uniform in +-1 / sqrt(fan_in), biases too
        1 / 8: (attn.W_Q, attn.b_Q, attn.W_K, attn.b_V, mlp.W_in, mlp.b_in),
        1 / 8.0: (attn.W_O, attn.b_O),  # fan_in = heads * d_head = 64
        1 / math.sqrt(48): (mlp.W_out, mlp.b_out),
    }
    for bound, tensors in bounds.items():
        for tensor in tensors:
            assert tensor.abs().max() <= bound and tensor.abs().max() > 0.8 * bound
    x = tokens()
    _, cache = model.run_with_cache(x)
    torch.testing.assert_close(cache["hook_embed"], model.embed.W_E[x] * 8.0)
    again = build_model(TASK, config)
    assert torch.equal(again.embed.W_E, model.embed.W_E)
    with pytest.raises(ValueError, match="parametrization 'semantic_focus' needs token inputs"):
        build_model(toy_tasks.get("linear_regression", d=2, n_points=3), config)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"attention": "sideways"}, "attention"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"parametrization": "mine"}, "parametrization"),
        ({"backend": "bridge", "dropout": 0.1}, "dropout"),
        ({"backend": "bridge", "attention": "bidirectional"}, "attention"),
        ({"backend": "bridge", "normalization": "LNPre"}, "normalization"),
    ],
)
def test_model_config_errors_name_the_field(changes, field) -> None:
    with pytest.raises(ValueError, match=rf"^{field}|normalization 'LNPre'"):
        ModelConfig(**changes)


def test_new_model_fields_keep_older_config_hashes() -> None:
    assert ModelConfig().to_dict() == ModelConfig.from_dict(ModelConfig().to_dict()).to_dict()
    assert "attention" not in ModelConfig().to_dict() and "dropout" not in ModelConfig().to_dict()
    assert ENCODER.to_dict()["attention"] == "bidirectional"
    assert ModelConfig.from_dict(ENCODER.to_dict()) == ENCODER


def test_a_tiny_encoder_learns_parity_of_a_short_sequence(tmp_path) -> None:
    config = TrainConfig(
        task="parity",
        task_overrides={"length": 5},
        model=ModelConfig(
            n_layers=2,
            d_model=32,
            n_heads=2,
            d_head=16,
            d_mlp=64,
            attention="bidirectional",
            positional="sinusoidal",
            normalization="LNPre",
        ),
        steps=500,
        batch_size=32,
        lr=1e-3,
        eval_every=100,
        eval_batch_size=256,
        metrics_every=100,
        checkpoint_every=500,
        device="cpu",
    )
    result = train(config, tmp_path, progress=False)
    accuracies = [r["eval_accuracy"] for r in read_metrics(result.metrics_path) if "eval_loss" in r]
    assert accuracies[0] < 0.6 and result.metrics["eval_accuracy"] >= 0.95


@pytest.mark.parametrize(
    "sparse", [None, {"method": "top_k", "hparams": {"k": 3}}], ids=["full", "top-k"]
)
def test_focus_and_stability_metrics_on_an_encoder(tmp_path, sparse) -> None:
    """The paper's stability quantities log per layer and as pooled percentiles while an encoder
    trains, dense or through top-k; the top-k run's selection is the top of every row."""
    config = TrainConfig(
        task="even_pairs",
        task_overrides={"length": 8},
        model=ENCODER.replace(parametrization="semantic_focus", dropout=0.01),
        steps=2,
        batch_size=4,
        eval_every=2,
        eval_batch_size=16,
        checkpoint_every=2,
        optimizer="sgd",
        lr=0.1,
        grad_clip=0.5,
        eval_metrics=("focus", "stability"),
        sparse=sparse,
        device="cpu",
    )
    record = train(config, tmp_path, progress=False).metrics
    focus, quantiles = record["focus"], record["focus_quantiles"]
    assert len(focus["c1"]) == 2 and len(focus["c1"][0]) == 2  # [layer][head]
    assert set(quantiles) == {"delta_full", "delta_sparse", "separation", "beta"}
    assert quantiles["separation"]["q0"] >= 0  # top-k of the scores: the top of every row
    assert quantiles["delta_sparse"]["q100"] <= quantiles["delta_full"]["q100"] + 1e-6
    assert quantiles["beta"]["q100"] <= 8  # at most every query selects a key
    assert len(record["stability"]["jacobian_norm"]) == 2
