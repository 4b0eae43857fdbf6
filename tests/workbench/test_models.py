"""`workbench.models`: toy-task transformers for token and continuous tasks (CPU)."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

import toy_tasks
import workbench.sparse
from workbench.models import (
    LinearEmbed,
    ModelConfig,
    build_model,
    check_compatible,
    sinusoidal_positions,
    toy_model,
)
from workbench.sparse.patch import sparsify
from workbench.trace import TraceConfig, trace

RECALL = toy_tasks.get("assoc_recall", vocab_size=32, n_pairs=4, seq_len=16)
REGRESSION = toy_tasks.get("linear_regression", d=4, n_points=6)
SMALL = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, seed=0)


def sample(task: toy_tasks.ToyTask, batch_size: int = 3) -> toy_tasks.Batch:
    return task.sample(batch_size, torch.Generator().manual_seed(0))


def test_token_model_shapes_and_seeded_init_without_global_state() -> None:
    before = torch.get_rng_state()
    model = build_model(RECALL, SMALL)
    assert torch.equal(torch.get_rng_state(), before)
    assert (model.cfg.d_vocab, model.cfg.n_ctx) == (32, 16)
    assert model(sample(RECALL).inputs).shape == (3, 16, 32)
    same = build_model(RECALL, SMALL)
    other = build_model(RECALL, SMALL.replace(seed=1))
    assert torch.equal(model.W_Q, same.W_Q)
    assert not torch.equal(model.W_Q, other.W_Q)


@pytest.mark.parametrize(
    "task",
    [REGRESSION, toy_tasks.get("single_location", seq_len=8, d=4, position="random")],
    ids=["linear_regression", "single_location"],
)
def test_continuous_model_projects_vectors_in_and_out(task: toy_tasks.ToyTask) -> None:
    from transformer_lens import HookedTransformer

    model = build_model(task, SMALL)
    assert isinstance(model, HookedTransformer)
    assert isinstance(model.embed, LinearEmbed)
    assert model.embed.W_in.shape == (task.d_input, 32)
    batch = sample(task)
    outputs = model(batch.inputs)
    assert outputs.shape == (3, task.seq_len, task.d_output)
    _, cache = model.run_with_cache(batch.inputs)
    assert cache["hook_embed"].shape == (3, task.seq_len, 32)
    restored = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(restored(batch.inputs), outputs)


def test_sinusoidal_positions_are_fixed_and_correct() -> None:
    model = build_model(RECALL, SMALL.replace(positional="sinusoidal"))
    table = model.pos_embed.W_pos
    assert table.shape == (16, 32)
    assert not any(name.endswith("W_pos") for name, _ in model.named_parameters())
    assert "pos_embed.W_pos" in model.state_dict()
    for pos, i in [(0, 0), (3, 0), (5, 4), (15, 15)]:
        angle = pos / 10000 ** (2 * i / 32)
        assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)
    torch.testing.assert_close(table, sinusoidal_positions(16, 32))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(sample(RECALL).inputs).square().mean().backward()
    optimizer.step()
    torch.testing.assert_close(model.pos_embed.W_pos, sinusoidal_positions(16, 32))


def test_rotary_and_no_layernorm_models_run() -> None:
    for config in (SMALL.replace(positional="rotary"), SMALL.replace(normalization=None)):
        model = build_model(REGRESSION, config)
        assert model(sample(REGRESSION).inputs).shape == (3, 12, 1)


def test_tracing_and_sparsify_work_on_the_continuous_model() -> None:
    model = build_model(REGRESSION, SMALL.replace(positional="sinusoidal"))
    batch = sample(REGRESSION)
    result = trace(
        model, batch.inputs, TraceConfig(ps=(0.9,)), relevant_positions=batch.relevant_positions
    )
    assert result.layers == [0, 1]
    relevant_mass = result.statistic(1, "relevant_mass")  # [batch, heads, seq]
    assert relevant_mass.shape == (3, 2, 12)
    # Every scored row's relevant positions are all earlier positions: the mass is 1.
    torch.testing.assert_close(relevant_mass[:, :, 0::2], torch.ones(3, 2, 6))

    dense = model(batch.inputs)
    keep_all = workbench.sparse.get("sink_window", sink=0, window=12)
    with torch.no_grad(), sparsify(model, keep_all, block_size=16):
        torch.testing.assert_close(model(batch.inputs), dense, atol=1e-5, rtol=1e-4)
    narrow = workbench.sparse.get("sink_window", sink=1, window=2)
    with sparsify(model, narrow, layers=[1], block_size=16):
        sparse = model(batch.inputs)
        sparse.square().mean().backward()
    assert not torch.allclose(sparse, dense)
    assert model.blocks[1].attn.W_Q.grad is not None
    assert torch.equal(model(batch.inputs), dense)  # restored on exit


def test_toy_model_still_serves_the_commands() -> None:
    model = toy_model(RECALL, seed=0, n_layers=1)
    assert not model.training
    assert model.cfg.n_layers == 1
    assert model(sample(RECALL).inputs).shape == (3, 16, 32)
    with pytest.raises(ValueError, match="not a token task"):
        toy_model(REGRESSION)


def test_incompatible_task_and_model_are_named() -> None:
    model = build_model(RECALL, SMALL)
    with pytest.raises(ValueError, match="vocab_size 64 but the model has 32"):
        check_compatible(model, RECALL.replace(vocab_size=64))
    with pytest.raises(ValueError, match="seq_len 24"):
        check_compatible(model, RECALL.replace(seq_len=24))
    with pytest.raises(ValueError, match="continuous task"):
        check_compatible(model, REGRESSION)
    with pytest.raises(ValueError, match="d_input 7"):
        check_compatible(build_model(REGRESSION, SMALL), REGRESSION.replace(d=6, n_points=3))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"n_layers": 0}, "n_layers"),
        ({"d_model": 33, "positional": "sinusoidal"}, "d_model"),
        ({"positional": "alibi"}, "positional"),
        ({"normalization": "RMS"}, "normalization"),
        ({"act_fn": "tanh"}, "act_fn"),
        ({"d_mlp": 0}, "d_mlp"),
        ({"seed": -1}, "seed"),
        ({"input_init": "zero"}, "input_init"),
        ({"readout_init": "xavier"}, "readout_init"),
        ({"position_scale": -0.5}, "position_scale"),
        ({"position_scale": float("nan")}, "position_scale"),
        ({"positional": "rotary", "position_scale": 2.0}, "position_scale"),
    ],
)
def test_model_config_validation_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ModelConfig(**changes)


def test_model_config_round_trips_through_a_dict() -> None:
    config = SMALL.replace(positional="rotary", normalization=None, attn_only=True)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"width": 3})


SINGLE = toy_tasks.get("single_location", seq_len=16, d=16, position="random")
WIDE = ModelConfig(n_layers=1, d_model=256, n_heads=2, d_head=16, positional="sinusoidal", seed=0)


def test_default_parametrisation_is_fan_in_in_and_out() -> None:
    """The papers' dense layers: input projection N(0, 1/d_input), readout N(0, 1/d_model)."""
    model = build_model(SINGLE, WIDE)
    d_input = SINGLE.d_input
    assert model.embed.W_in.std().item() == pytest.approx(d_input**-0.5, rel=0.05)
    assert model.unembed.W_U.std().item() == pytest.approx(256**-0.5, rel=0.1)
    assert not model.embed.b_in.any() and not model.unembed.b_U.any()
    # The same draws as TransformerLens' initialisation, scaled: every other weight is unchanged.
    library = build_model(
        SINGLE, WIDE.replace(input_init="transformer_lens", readout_init="transformer_lens")
    )
    ratio = library.cfg.initializer_range * d_input**0.5
    torch.testing.assert_close(library.embed.W_in, model.embed.W_in * ratio)
    assert torch.equal(library.W_Q, model.W_Q) and torch.equal(library.W_in, model.W_in)
    assert library.unembed.W_U.std().item() == pytest.approx(library.cfg.initializer_range, rel=0.1)


def test_torch_linear_and_zero_parametrisations() -> None:
    model = build_model(
        SINGLE, WIDE.replace(input_init="torch_linear", readout_init="torch_linear")
    )
    bound = SINGLE.d_input**-0.5
    assert model.embed.W_in.abs().max() <= bound and model.embed.b_in.abs().max() <= bound
    assert model.embed.W_in.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    assert model.unembed.b_U.any() and model.unembed.b_U.abs().max() <= 256**-0.5
    zero = build_model(SINGLE, WIDE.replace(readout_init="zero"))
    assert not zero(sample(SINGLE).inputs).any()  # the zero predictor at initialisation


@pytest.mark.parametrize("positional", ["sinusoidal", "standard"])
def test_position_scale_multiplies_the_positions(positional: str) -> None:
    config = WIDE.replace(positional=positional)
    plain = build_model(SINGLE, config)
    scaled = build_model(SINGLE, config.replace(position_scale=0.25))
    torch.testing.assert_close(scaled.pos_embed.W_pos, 0.25 * plain.pos_embed.W_pos)
    assert torch.equal(scaled.embed.W_in, plain.embed.W_in)


def test_token_models_take_only_the_default_parametrisation() -> None:
    assert build_model(RECALL, SMALL.replace(position_scale=2.0)) is not None
    for name, value in (("input_init", "torch_linear"), ("readout_init", "zero")):
        with pytest.raises(ValueError, match=name):
            build_model(RECALL, SMALL.replace(**{name: value}))


def test_parametrisation_is_serialised_only_when_not_the_default() -> None:
    assert {"input_init", "readout_init", "position_scale"}.isdisjoint(SMALL.to_dict())
    changed = SMALL.replace(input_init="transformer_lens", readout_init="zero", position_scale=0.5)
    data = changed.to_dict()
    assert (data["input_init"], data["readout_init"], data["position_scale"]) == (
        "transformer_lens",
        "zero",
        0.5,
    )
    assert ModelConfig.from_dict(data) == changed
