"""Bad input gets a clear error naming the parameter, never a crash deep inside: one regression
test per cause found by fuzzing the public constructors (`test_fuzz_constructors` holds the
property tests)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import workbench.sparse
from kernels.layout import MAX_BLOCK, MAX_LEN, Layout
from toy_tasks import AssociativeRecall, LinearRegressionICL, SingleLocationRegression
from toy_tasks.base import check_float
from workbench.experiments.spec import ExperimentSpec
from workbench.models import ModelConfig, toy_model
from workbench.sparse.base import check_fraction
from workbench.trace import TraceConfig, trace
from workbench.train import TrainConfig

INF = float("inf")


def sample(task) -> None:
    task.sample(2, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- finite floats
def test_check_float_rejects_infinities() -> None:
    with pytest.raises(ValueError, match="noise must be a finite number"):
        check_float("noise", INF, 0.0)
    with pytest.raises(ValueError, match="below must be a finite number"):
        check_float("below", -INF, -INF)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        check_float("alpha", 10**400, 0.0)  # an int beyond the float range


def test_infinite_noise_is_rejected_not_sampled() -> None:
    with pytest.raises(ValueError, match="noise"):
        sample(LinearRegressionICL(noise=INF))


def test_infinite_power_a_is_rejected_not_sampled() -> None:
    with pytest.raises(ValueError, match="power_a"):
        sample(AssociativeRecall(power_a=INF))


def test_infinite_learning_rate_is_rejected() -> None:
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=INF)
    with pytest.raises(ValueError, match="weight_decay"):
        TrainConfig(weight_decay=INF)


def test_finite_floats_that_overflow_later_are_bounded() -> None:
    # power_a 200 makes the gap weights (g + 1) ** 199 overflow float64 on long sequences.
    with pytest.raises(ValueError, match=r"power_a must be in \[0.0, 16.0\]"):
        sample(AssociativeRecall(vocab_size=4096, seq_len=2048, power_a=200.0))
    with pytest.raises(ValueError, match="noise"):
        sample(LinearRegressionICL(noise=1e300))
    AssociativeRecall(power_a=16.0).sample(2, torch.Generator().manual_seed(0))


def test_seeds_beyond_torch_generators_are_rejected() -> None:
    with pytest.raises(ValueError, match="task_seed"):
        sample(SingleLocationRegression(task_seed=2**64))
    SingleLocationRegression(task_seed=2**64 - 1).target_matrix()


# ---------------------------------------------------------------------------- layouts
def test_layout_block_sizes_are_checked_before_any_arithmetic() -> None:
    mask = torch.ones(1, 1, 40, 40, dtype=torch.bool)
    scores, threshold = torch.zeros(1, 1, 40, 40), torch.zeros(1, 1, 40)
    for block in (0, -22, 4, 17, MAX_BLOCK * 2, 16.0, "16", None):
        with pytest.raises(ValueError, match="block_q"):
            Layout.dense(40, 40, block_q=block)
        with pytest.raises(ValueError, match="block_q"):
            Layout.from_token_mask(mask, block_q=block)
        with pytest.raises(ValueError, match="block_k"):
            Layout.from_block_mask(torch.ones(1, 1, 1, 1, dtype=torch.bool), 40, 40, block_k=block)
        with pytest.raises(ValueError, match="block_k"):
            Layout.from_row_threshold(scores, threshold, block_k=block)


def test_layout_lengths_are_checked_before_any_arithmetic() -> None:
    for length in ("40", 40.0, None, [], 0, -22, MAX_LEN + 1):
        with pytest.raises(ValueError, match="q_len"):
            Layout.dense(length, 40)
        with pytest.raises(ValueError, match="kv_len"):
            Layout.from_block_mask(torch.ones(1, 1, 1, 1, dtype=torch.bool), 40, length)


def test_huge_layout_with_a_bad_block_is_rejected_at_once() -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match="block_q"):
        Layout.dense(10**9, 50, block_q=4)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("bad", [None, [[True]], "mask", np.ones((1, 1, 40, 40), dtype=bool)])
def test_layout_tensor_arguments_must_be_tensors(bad) -> None:
    scores, threshold = torch.zeros(1, 1, 40, 40), torch.zeros(1, 1, 40)
    with pytest.raises(ValueError, match=r"token_mask must be a torch\.Tensor"):
        Layout.from_token_mask(bad)
    with pytest.raises(ValueError, match=r"block_mask must be a torch\.Tensor"):
        Layout.from_block_mask(bad, 40, 40)
    with pytest.raises(ValueError, match=r"scores must be a torch\.Tensor"):
        Layout.from_row_threshold(bad, threshold)
    with pytest.raises(ValueError, match=r"threshold must be a torch\.Tensor"):
        Layout.from_row_threshold(scores, bad)
    dense = Layout.dense(40, 40)
    with pytest.raises(ValueError, match=r"kv_indices must be a torch\.Tensor"):
        Layout(bad, dense.kv_counts, 40, 40)
    if bad is not None:  # None: no token mask
        with pytest.raises(ValueError, match=r"token_mask must be a torch\.Tensor"):
            Layout(dense.kv_indices, dense.kv_counts, 40, 40, token_mask=bad)


def test_row_threshold_of_the_wrong_shape_is_named() -> None:
    with pytest.raises(ValueError, match="threshold must be"):
        Layout.from_row_threshold(torch.zeros(1, 1, 40, 40), torch.zeros(1, 1, 39))


@pytest.mark.parametrize("causal", ["yes", 2.5, [], None, 1])
def test_layout_causal_must_be_a_bool(causal) -> None:
    with pytest.raises(ValueError, match="causal must be a bool"):
        Layout.dense(40, 40, causal=causal)
    with pytest.raises(ValueError, match="causal must be a bool"):
        Layout.from_token_mask(torch.ones(1, 1, 40, 40, dtype=torch.bool), causal=causal)
    dense = Layout.dense(40, 40)
    with pytest.raises(ValueError, match="causal must be a bool"):
        Layout(dense.kv_indices, dense.kv_counts, 40, 40, causal=causal)


def test_blocks_longer_than_the_sequence_never_pad_to_the_block() -> None:
    mask = torch.rand(1, 1, 40, 24, generator=torch.Generator().manual_seed(0)) < 0.5
    layout = Layout.from_token_mask(mask, block_q=MAX_BLOCK, block_k=MAX_BLOCK)
    assert layout.n_q_blocks == layout.n_kv_blocks == 1
    assert torch.equal(layout.to_dense(), mask)


# ---------------------------------------------------------------------------- sparse methods
@pytest.mark.parametrize("tau", ["", None, [], "0.5", True, INF, 10**400])
def test_fractions_are_type_checked_before_compared(tau) -> None:
    with pytest.raises(ValueError, match="tau must"):
        workbench.sparse.get("xattention", tau=tau)
    with pytest.raises(ValueError, match="p must"):
        check_fraction("p", tau)


def test_quest_page_size_is_bounded_and_never_padded_to() -> None:
    with pytest.raises(ValueError, match=rf"page_size must be an integer in \[1, {MAX_LEN}\]"):
        workbench.sparse.get("quest", page_size=2**31)
    q, k = torch.randn(1, 2, 24, 8), torch.randn(1, 1, 40, 8)
    huge = workbench.sparse.get("quest", page_size=MAX_LEN).select(q, k, causal=True)
    whole = workbench.sparse.get("quest", page_size=40).select(q, k, causal=True)
    assert torch.equal(huge.to_dense(), whole.to_dense())


def test_delta_gamma_is_bounded() -> None:
    with pytest.raises(ValueError, match=rf"gamma must be an integer in \[1, {MAX_LEN}\]"):
        workbench.sparse.get("delta", gamma=2**63)
    with pytest.raises(ValueError, match="min_tail"):
        workbench.sparse.get("delta", min_tail=2**63)


@pytest.mark.parametrize(
    ("name", "field"),
    [("sink_window", "window"), ("power", "sink"), ("strided", "stride"), ("random", "k")],
)
def test_integer_hyper_parameters_are_bounded_by_the_longest_sequence(name, field) -> None:
    with pytest.raises(ValueError, match=field):
        workbench.sparse.get(name, **{field: 2**64})
    method = workbench.sparse.get(name, **{field: MAX_LEN})
    q, k = torch.randn(1, 1, 20, 8), torch.randn(1, 1, 20, 8)
    method.select(q, k, causal=True, block_size=16)


def test_unknown_base_method_names_the_argument() -> None:
    with pytest.raises(ValueError, match="base must be a SparseMethod or a registered name"):
        workbench.sparse.get("delta", base="nope")
    with pytest.raises(ValueError, match="unknown sparse method"):
        workbench.sparse.get(["top_k"])


# ---------------------------------------------------------------------------- trace config
@pytest.mark.parametrize("field", ["patterns", "stats"])
@pytest.mark.parametrize("value", ["yes", 1, None, [], 0.5])
def test_trace_flags_must_be_bools(field, value) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a bool"):
        TraceConfig(**{field: value})


@pytest.mark.parametrize("value", [1.5, math.nan, None, "4", 0, 2**64])
def test_trace_sink_tokens_must_be_a_positive_int(value) -> None:
    with pytest.raises(ValueError, match="sink_tokens"):
        TraceConfig(sink_tokens=value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ps", 0),
        ("ps", 0.5),
        ("ps", "0.5"),
        ("ps", [True]),
        ("layers", 0),
        ("layers", "01"),
        ("layers", [0.5]),
        ("heads", "cpu"),
        ("heads", [True]),
        ("pattern_queries", {"a": 1}),
        ("max_pattern_bytes", "1"),
        ("max_pattern_bytes", math.nan),
    ],
)
def test_trace_sequences_and_sizes_name_the_field(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        TraceConfig(**{field: value})


def test_trace_heads_out_of_range_are_called_heads() -> None:
    model = toy_model(AssociativeRecall(vocab_size=16, seq_len=8, n_pairs=2), n_layers=1)
    with pytest.raises(ValueError, match=r"heads must be a non-empty subset of 0\.\.3"):
        trace(model, torch.zeros(1, 8, dtype=torch.long), TraceConfig(heads=[5]))


# ---------------------------------------------------------------------------- training configs
@pytest.mark.parametrize("value", [0, None, "k=1", [("k", 1)], {1: 2}])
@pytest.mark.parametrize("field", ["task_overrides", "sparse.hparams"])
def test_train_keyword_mappings_must_be_mappings(field, value) -> None:
    changes = (
        {"sparse": {"method": "top_k", "hparams": value}}
        if field == "sparse.hparams"
        else {field: value}
    )
    with pytest.raises(ValueError, match=field):
        TrainConfig(**changes)


@pytest.mark.parametrize("value", [0, "eval_loss", [("metric", "eval_loss")], 2.5])
def test_train_early_stop_must_be_a_mapping(value) -> None:
    with pytest.raises(ValueError, match="early_stop"):
        TrainConfig(early_stop=value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sparse": {"method": "top_k", "layers": 0}}, "sparse.layers"),
        ({"sparse": {"method": "top_k", "layers": "01"}}, "sparse.layers"),
        ({"sparse": {"method": []}}, "sparse.method"),
        ({"sparse": {"method": 0}}, "sparse.method"),
        ({"sparse": {"method": "top_k", "block_size": 8}}, "sparse.block_size"),
        ({"sparse": {"method": "top_k", "block_size": 48}}, "sparse.block_size"),
        ({"sparse": {"method": "top_k", "nope": 1}}, "sparse"),
        ({"sparse": 3}, "sparse"),
        ({"eval_metrics": ["attention", "attention"]}, "eval_metrics"),
        ({"eval_metrics": [1]}, "eval_metrics"),
        ({"device": 0}, "device"),
        ({"device": 2**63}, "device"),
        ({"early_stop": {"metric": "eval_loss", "below": INF}}, "early_stop"),
        ({"early_stop": {"metric": "eval_loss", "below": 1.0, "above": 0.0}}, "early_stop"),
    ],
)
def test_train_fields_name_themselves(changes, field) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        TrainConfig(**changes)


def test_train_rates_that_only_diverge_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"lr must be in \[0.0, 10.0\]"):
        TrainConfig(lr=1e300)
    with pytest.raises(ValueError, match=r"weight_decay must be in \[0.0, 10.0\]"):
        TrainConfig(weight_decay=1e300)


def test_train_sparse_hparams_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"sparse\.hparams of top_k: k must be"):
        TrainConfig(sparse={"method": "top_k", "hparams": {"k": 0}})


def test_train_on_missing_cuda_names_the_device() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ValueError, match="device is 'cuda'"):
        TrainConfig(device="cuda").torch_device()


def test_model_seed_beyond_torch_generators_is_rejected() -> None:
    with pytest.raises(ValueError, match="seed"):
        ModelConfig(seed=2**64)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"seeds": 5}, "seeds"),
        ({"seeds": [True]}, "seeds"),
        ({"base": 5}, "base"),
        ({"sweep": {1: [1, 2]}}, "sweep"),
        ({"quick": {"seeds": 3}}, "quick.seeds"),
        ({"quick": {"sweep": {"steps": 4}}}, "quick.sweep"),
        ({"base": {"steps": math.nan}}, "base"),
        ({"analysis": {"when": {1, 2}}}, "analysis"),
    ],
)
def test_experiment_spec_fields_name_themselves(changes, field) -> None:
    data = {"name": "toy", "description": "a spec", "base": {"steps": 10}, **changes}
    with pytest.raises(ValueError, match=field):
        ExperimentSpec.from_dict(data)
