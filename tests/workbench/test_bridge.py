"""Toy models on TransformerLens' ``TransformerBridge`` (`workbench.bridge`): routing, tracing and
sparse methods agree with the ``HookedTransformer`` of the same weights (CPU)."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import toy_tasks
import workbench.sparse
from workbench.attention import (
    AttentionCall,
    dense_core,
    is_transformer_bridge,
    is_transformer_lens,
    route_attention,
)
from workbench.bridge import hooked_to_bridge_state_dict
from workbench.experiments.spec import config_hash
from workbench.metrics.fidelity import fidelity
from workbench.metrics.stability import AttentionWeights, model_lipschitz_estimate
from workbench.models import ModelConfig, build_model, check_compatible
from workbench.sparse.base import SparseMethod
from workbench.sparse.patch import sparsify
from workbench.trace import TraceConfig, trace

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
RECALL = toy_tasks.get("assoc_recall", vocab_size=32, n_pairs=3, seq_len=16)
SMALL = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, seed=0)
KINDS = {
    # token model: LayerNorm, MLP, learned positions
    "tokens": (RECALL, SMALL),
    # the emergence paper's model: continuous inputs, sinusoidal positions, no LayerNorm
    "continuous": (
        toy_tasks.get("single_location", seq_len=16, d=4, position="random"),
        SMALL.replace(positional="sinusoidal", normalization=None),
    ),
    "rotary": (RECALL, SMALL.replace(positional="rotary", attn_only=True)),
}
STATISTICS = ("entropy", "max_weight", "lse", "sink_mass", "relevant_mass", "top_p_budget")


Models = tuple[toy_tasks.ToyTask, toy_tasks.Batch, torch.nn.Module, torch.nn.Module]


@functools.cache
def models(kind: str) -> Models:
    """``(task, batch, hooked, bridge)``: the bridge holds the hooked model's weights."""
    task, config = KINDS[kind]
    hooked = build_model(task, config).eval()
    bridge = build_model(task, config.replace(backend="bridge")).eval()
    bridge.load_state_dict(hooked_to_bridge_state_dict(hooked), strict=True)
    return task, task.sample(3, torch.Generator().manual_seed(0)), hooked, bridge


def native(bridge: torch.nn.Module, layer: int) -> torch.nn.Module:
    return bridge.blocks[layer].attn.original_component


@pytest.mark.parametrize("kind", KINDS)
def test_bridge_builds_the_architecture_and_matches_the_hooked_model(kind: str) -> None:
    task, batch, hooked, bridge = models(kind)
    assert is_transformer_bridge(bridge) and is_transformer_lens(bridge)
    assert not is_transformer_bridge(hooked)
    check_compatible(bridge, task)
    with torch.no_grad():
        expected, actual = hooked(batch.inputs), bridge(batch.inputs)
    assert actual.shape == (3, task.seq_len, task.d_output if kind == "continuous" else 32)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)
    if kind == "continuous":  # fixed sinusoidal table: a buffer, not a parameter
        names = [name for name, _ in bridge.named_parameters()]
        assert not any(name.startswith("pos.") for name in names)
        assert torch.equal(bridge.pos_embed.W_pos, hooked.pos_embed.W_pos)


def test_bridge_weights_come_from_the_seed_without_global_state() -> None:
    config = SMALL.replace(backend="bridge")
    before = torch.get_rng_state()
    first = build_model(RECALL, config)
    assert torch.equal(torch.get_rng_state(), before)
    assert first.training
    same, other = build_model(RECALL, config), build_model(RECALL, config.replace(seed=1))
    assert torch.equal(first.blocks[0].attn.W_Q, same.blocks[0].attn.W_Q)
    assert not torch.equal(first.blocks[0].attn.W_Q, other.blocks[0].attn.W_Q)


def test_bridge_takes_the_parametrisation_of_the_config() -> None:
    task, config = KINDS["continuous"]
    config = config.replace(backend="bridge", d_model=256, d_head=64)
    fan_in = build_model(task, config)
    projection, readout = fan_in.embed.original_component, fan_in.unembed.original_component
    assert projection.weight.std().item() == pytest.approx(task.d_input**-0.5, rel=0.1)
    assert readout.weight.std().item() == pytest.approx(256**-0.5, rel=0.1)
    assert not projection.bias.any() and not readout.bias.any()
    zero = build_model(task, config.replace(readout_init="zero", position_scale=0.5))
    assert not zero.unembed.original_component.weight.any()
    torch.testing.assert_close(zero.pos_embed.W_pos, 0.5 * fan_in.pos_embed.W_pos)
    library = build_model(task, config.replace(input_init="transformer_lens"))
    assert library.embed.original_component.weight.std().item() == pytest.approx(
        0.8 / 256**0.5, rel=0.1
    )


@pytest.mark.parametrize("kind", KINDS)
def test_trace_gives_the_same_statistics(kind: str) -> None:
    _, batch, hooked, bridge = models(kind)
    config = TraceConfig(ps=(0.5, 0.9))
    traces = [
        trace(model, batch.inputs, config, relevant_positions=batch.relevant_positions)
        for model in (hooked, bridge)
    ]
    assert traces[1].layers == traces[0].layers == [0, 1]
    for layer in traces[0].layers:
        for name in STATISTICS:
            expected, actual = (t.stats[layer][name] for t in traces)
            if name == "top_p_budget":
                assert torch.equal(actual, expected), (layer, name)
            else:
                torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_trace_records_the_bridge_patterns() -> None:
    _, batch, hooked, bridge = models("tokens")
    config = TraceConfig(patterns=True, layers=[1])
    expected, actual = (trace(model, batch.inputs, config) for model in (hooked, bridge))
    torch.testing.assert_close(actual.patterns[1], expected.patterns[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["tokens", "continuous"])
@pytest.mark.parametrize(
    "method",
    [workbench.sparse.get("top_k", k=3), workbench.sparse.get("sink_window", sink=1, window=4)],
    ids=["top_k", "sink_window"],
)
def test_sparsify_gives_the_same_outputs(kind: str, method: SparseMethod) -> None:
    _, batch, hooked, bridge = models(kind)
    outputs, densities = [], []
    for model in (hooked, bridge):
        with torch.no_grad(), sparsify(model, method, layers=[1], block_size=16) as record:
            outputs.append(model(batch.inputs))
        densities.append(record.densities())
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    assert densities[1] == pytest.approx(densities[0])
    with torch.no_grad():
        assert not torch.allclose(bridge(batch.inputs), outputs[1])  # the method changed them


@pytest.mark.parametrize("padded", [False, True])
def test_routing_reproduces_and_restores_the_bridge_exactly(padded: bool) -> None:
    _, batch, _, bridge = models("rotary")
    x = batch.inputs
    mask = torch.ones(x.shape, dtype=torch.long)
    mask[1, :5] = 0  # left padding
    kwargs = {"attention_mask": mask} if padded else {}

    def observing(call: AttentionCall) -> torch.Tensor:
        return call.model_attention()[0]

    def failing(call: AttentionCall) -> torch.Tensor:
        raise RuntimeError("boom")

    with torch.no_grad():
        reference = bridge(x, **kwargs)
        with route_attention(bridge, dense_core):
            dense = bridge(x, **kwargs)
        with route_attention(bridge, observing, layers=[0]):
            observed = bridge(x, **kwargs)
        with pytest.raises(RuntimeError, match="boom"), route_attention(bridge, failing):
            bridge(x, **kwargs)
        after = bridge(x, **kwargs)
    real = mask.bool() if padded else slice(None)
    torch.testing.assert_close(dense[real], reference[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(observed, reference)
    assert torch.equal(after, reference)
    assert all("forward" not in native(bridge, layer).__dict__ for layer in (0, 1))


def test_user_hooks_fire_on_routed_bridge_layers() -> None:
    _, batch, _, bridge = models("tokens")
    fired: list[str] = []
    names = ("blocks.1.attn.hook_q", "blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern")
    record = [(name, lambda tensor, hook: fired.append(hook.name)) for name in names]
    zero_z = [("blocks.1.attn.hook_z", lambda z, hook: torch.zeros_like(z))]
    seen: list[tuple[int, tuple[int, ...]]] = []

    def core(call: AttentionCall) -> torch.Tensor:
        seen.append((call.layer, tuple(call.q.shape)))
        assert call.causal and call.key_padding is None
        return dense_core(call)

    with torch.no_grad():
        with route_attention(bridge, core, layers=[1]), bridge.hooks(fwd_hooks=record):
            bridge(batch.inputs)
        with bridge.hooks(fwd_hooks=zero_z):
            expected = bridge(batch.inputs)
        with route_attention(bridge, dense_core, layers=[1]), bridge.hooks(fwd_hooks=zero_z):
            actual = bridge(batch.inputs)
    assert seen == [(1, (3, 2, 16, 16))]
    # hook_q and hook_z fire (TL reports their canonical names); no pattern without the model's code
    assert fired == ["blocks.1.attn.q.hook_out", "blocks.1.attn.o.hook_in"]
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)  # hook outputs are used


def test_metrics_on_the_bridge() -> None:
    _, batch, hooked, bridge = models("tokens")
    method = workbench.sparse.get("top_k", k=3)
    targets = {"targets": batch.targets, "loss_mask": batch.loss_mask}
    reports = [
        fidelity(model, batch.inputs, method, block_size=16, **targets)
        for model in (hooked, bridge)
    ]
    assert reports[1].kl == pytest.approx(reports[0].kl, rel=1e-4, abs=1e-7)
    assert reports[1].sparse_accuracy == reports[0].sparse_accuracy
    assert reports[1].layers[1].recall == pytest.approx(reports[0].layers[1].recall, rel=1e-5)
    expected = AttentionWeights.from_transformer_lens(hooked.blocks[0].attn)
    actual = AttentionWeights.from_transformer_lens(bridge.blocks[0].attn)
    for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
        torch.testing.assert_close(getattr(actual, name), getattr(expected, name))
    assert (actual.scale, actual.causal) == (expected.scale, expected.causal)
    with pytest.raises(NotImplementedError, match="start_at_layer"):
        model_lipschitz_estimate(bridge, batch.inputs)


class TransformerBridge(torch.nn.Module):
    """Stands for a bridge around a Hugging Face model (its attention is not TL-native)."""


class Foreign(TransformerBridge):
    def __init__(self) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(n_layers=1, architecture="GPT2LMHeadModel")
        self.blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.blocks[0].attn = torch.nn.Linear(2, 2)


def test_unsupported_bridge_configurations_raise() -> None:
    with pytest.raises(ValueError, match="act_fn"):
        SMALL.replace(act_fn="gelu_fast", backend="bridge")
    with pytest.raises(ValueError, match="backend"):
        SMALL.replace(backend="native")
    _, batch, _, bridge = models("tokens")
    attention = native(bridge, 0)
    attention.attn_scores_soft_cap = 30.0
    try:
        with (
            pytest.raises(NotImplementedError, match="attn_scores_soft_cap"),
            route_attention(bridge, dense_core),
        ):
            pass
    finally:
        attention.attn_scores_soft_cap = -1.0
    with (
        pytest.raises(NotImplementedError, match="TL-native"),
        route_attention(Foreign(), dense_core),
    ):
        pass
    four_d = torch.ones(3, 1, 16, 16, dtype=torch.bool)
    with (
        torch.no_grad(),
        pytest.raises(NotImplementedError, match="2-D attention masks"),
        route_attention(bridge, dense_core),
    ):
        bridge(batch.inputs, attention_mask=four_d)


def test_backend_is_serialised_only_when_not_the_default() -> None:
    assert "backend" not in SMALL.to_dict()
    data = SMALL.replace(backend="bridge").to_dict()
    assert data["backend"] == "bridge"
    assert ModelConfig.from_dict(data) == SMALL.replace(backend="bridge")
    assert ModelConfig.from_dict(SMALL.to_dict()) == SMALL


TRAINED_BEFORE_PARAMETRISATION = ("emergence_h100", "semantic_focus_h100", "attention_saes_cpu")
"""Committed results trained before ``input_init`` / ``readout_init`` existed."""


def test_committed_run_configs_keep_their_hashes() -> None:
    """Run folders are keyed by the hash of their config: no committed run's folder may change
    because ``ModelConfig`` grew ``backend`` (left out of the dicts at its default); the
    continuous-task runs trained before ``input_init`` / ``readout_init`` existed name the
    TransformerLens initialisation they were trained with (migrated with
    ``workbench runs migrate --pin-parametrisation``)."""
    folders = sorted(RESULTS.glob("*/runs/*"))
    assert folders
    for folder in folders:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        assert config_hash(config) == folder.name
        if config["model"].get("architecture") == "emergence_toy":
            continue  # the emergence paper's toy model: no transformer to build
        model = ModelConfig.from_dict(config["model"])
        assert model.backend == "hooked" and "backend" not in model.to_dict()
        continuous = toy_tasks.task_class(config["task"]["name"]).kind == "continuous"
        if continuous and folder.parents[1].name in TRAINED_BEFORE_PARAMETRISATION:
            assert (model.input_init, model.readout_init) == ("transformer_lens",) * 2
