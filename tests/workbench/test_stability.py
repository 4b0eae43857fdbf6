"""`workbench.metrics.stability`: softmax Jacobians, margins, flip rates, Lipschitz estimates and
bounds, checked against independent computations (CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import toy_tasks
import workbench.sparse
from kernels.reference import scaled_scores, top_k_threshold, top_p_threshold
from workbench.capture import LayerCapture
from workbench.cli import app
from workbench.metrics.stability import (
    AttentionWeights,
    analytic_bound,
    flip_rate,
    focus_quantities,
    jacobian_frobenius_norm,
    jacobian_spectral_norm,
    lipschitz_estimate,
    model_lipschitz_estimate,
    row_stability,
    row_stability_from_qk,
    softmax_jacobian,
    sparse_probs,
    top_k_margin,
    top_p_margin,
    topk_stability_conditions,
    topk_stability_ratios,
)
from workbench.models import ModelConfig, build_model
from workbench.runs import read_metrics
from workbench.sparse.base import visible
from workbench.train import TrainConfig, train


def random_rows(rows: int, n: int, seed: int, spread: float = 3.0) -> torch.Tensor:
    return (
        torch.randn(rows, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        * spread
    )


def test_jacobian_and_norms_match_autograd_and_linalg() -> None:
    for row in random_rows(6, 7, 0):
        jacobian = torch.autograd.functional.jacobian(lambda s: torch.softmax(s, -1), row)
        p = torch.softmax(row, -1)
        torch.testing.assert_close(softmax_jacobian(p), jacobian)
        for method in ("secular", "eigh", "power"):
            torch.testing.assert_close(
                jacobian_spectral_norm(p, method), torch.linalg.matrix_norm(jacobian, ord=2)
            )
        torch.testing.assert_close(
            jacobian_frobenius_norm(p), torch.linalg.matrix_norm(jacobian, ord="fro")
        )


@pytest.mark.parametrize("n", [2, 3, 10, 1000])
def test_closed_forms_on_hand_made_rows(n: int) -> None:
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    torch.testing.assert_close(
        jacobian_spectral_norm(uniform), torch.tensor(1.0 / n, dtype=torch.float64)
    )
    one_hot = torch.zeros(n, dtype=torch.float64)
    one_hot[n // 2] = 1.0
    assert jacobian_spectral_norm(one_hot).item() == pytest.approx(0.0, abs=1e-12)
    assert jacobian_frobenius_norm(one_hot).item() == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=20),
    st.floats(0.01, 20),
)
def test_spectral_norm_is_at_most_one_half(logits: list[float], temperature: float) -> None:
    p = torch.softmax(torch.tensor(logits, dtype=torch.float64) * temperature, -1)
    norm = jacobian_spectral_norm(p).item()
    assert 0.0 <= norm <= 0.5 + 1e-12
    exact = torch.linalg.eigvalsh(softmax_jacobian(p))[-1].item()
    assert norm == pytest.approx(exact, abs=1e-9)


def test_power_iteration_matches_the_secular_root_on_long_rows() -> None:
    p = torch.softmax(random_rows(3, 4096, 1, spread=4.0), -1)
    torch.testing.assert_close(
        jacobian_spectral_norm(p, "power"), jacobian_spectral_norm(p), rtol=1e-6, atol=1e-9
    )


def test_sparse_jacobian_is_the_jacobian_of_the_renormalised_selection() -> None:
    scores = random_rows(1, 12, 2)[0]
    keep = scores >= top_k_threshold(scores, 4)
    restricted = torch.autograd.functional.jacobian(lambda s: torch.softmax(s, -1), scores[keep])
    jacobian = softmax_jacobian(sparse_probs(scores, keep))
    torch.testing.assert_close(jacobian[keep][:, keep], restricted)
    assert jacobian[~keep].abs().max() == 0 and jacobian[:, ~keep].abs().max() == 0
    torch.testing.assert_close(
        jacobian_spectral_norm(sparse_probs(scores, keep)),
        torch.linalg.matrix_norm(restricted, ord=2),
    )


def worst_top_k_perturbation(scores: torch.Tensor, k: int, size: float) -> torch.Tensor:
    """Lower the selected scores and raise the others by ``size``."""
    selected = scores >= top_k_threshold(scores, k)
    return torch.where(selected, -size, size).to(scores.dtype)


def test_top_k_margin_is_the_smallest_set_changing_perturbation() -> None:
    k = 3
    generator = torch.Generator().manual_seed(3)
    for scores in random_rows(20, 9, 3):
        margin = top_k_margin(scores, k).item()
        assert top_k_changed(scores, worst_top_k_perturbation(scores, k, margin * 1.01), k)
        assert not top_k_changed(scores, worst_top_k_perturbation(scores, k, margin * 0.99), k)
        for _ in range(20):
            signs = torch.randint(0, 2, scores.shape, generator=generator) * 2.0 - 1.0
            assert not top_k_changed(scores, signs.double() * margin * 0.99, k)


def top_k_changed(scores: torch.Tensor, delta: torch.Tensor, k: int) -> bool:
    new = scores + delta
    return bool((new >= top_k_threshold(new, k)).ne(scores >= top_k_threshold(scores, k)).any())


def top_p_changed(scores: torch.Tensor, delta: torch.Tensor, p: float) -> bool:
    return bool(top_p_set(scores + delta, p).ne(top_p_set(scores, p)).any())


def top_p_set(scores: torch.Tensor, p: float) -> torch.Tensor:
    return scores >= top_p_threshold(scores, p)


def test_top_p_margin_is_the_smallest_set_changing_perturbation() -> None:
    p = 0.85
    generator = torch.Generator().manual_seed(4)
    for scores in random_rows(30, 8, 4, spread=1.5):
        margin = top_p_margin(scores, p).item()
        selected = top_p_set(scores, p)
        order = scores.argsort(descending=True)
        budget = int(selected.sum())
        candidates = []  # the three extremal directions of the margin's derivation
        for size in (budget - 1, budget):
            raised = torch.zeros_like(selected)
            raised[order[:size]] = True
            candidates += [torch.where(raised, 1.0, -1.0), torch.where(raised, -1.0, 1.0)]
        boundary = torch.zeros_like(scores)
        boundary[order[budget - 1]] = -1.0
        if budget < scores.numel():
            boundary[order[budget]] = 1.0
        candidates.append(boundary)
        candidates = [c.double() for c in candidates]
        assert any(top_p_changed(scores, c * margin * 1.01, p) for c in candidates)
        for direction in candidates:
            assert not top_p_changed(scores, direction * margin * 0.99, p)
        for _ in range(20):
            signs = torch.randint(0, 2, scores.shape, generator=generator) * 2.0 - 1.0
            assert not top_p_changed(scores, signs.double() * margin * 0.99, p)


def test_flip_rate_is_zero_without_noise_and_grows_with_it() -> None:
    generator = torch.Generator().manual_seed(5)
    q = torch.randn(2, 2, 16, 8, generator=generator)
    k = torch.randn(2, 2, 16, 8, generator=generator)
    method = workbench.sparse.get("top_k", k=3)
    rates = [
        flip_rate(q, k, method, sigma, 8, torch.Generator().manual_seed(6))
        for sigma in (0.0, 0.01, 0.1, 1.0)
    ]
    assert rates[0] == 0.0
    assert rates[1] <= rates[2] <= rates[3] and rates[3] > rates[1]
    banded = workbench.sparse.get("banded", k=3)
    assert flip_rate(q, k, banded, 1.0, 4, torch.Generator().manual_seed(6)) == 0.0


def tiny_weights(seed: int, heads: int, d_model: int, d_head: int, size: float) -> AttentionWeights:
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * size

    return AttentionWeights(
        W_Q=draw(heads, d_model, d_head),
        W_K=draw(heads, d_model, d_head),
        W_V=draw(heads, d_model, d_head),
        W_O=draw(heads, d_head, d_model),
        b_Q=draw(heads, d_head),
        b_K=draw(heads, d_head),
        b_V=draw(heads, d_head),
        b_O=draw(d_model),
        scale=1.0 / math.sqrt(d_head),
        causal=seed % 2 == 0,
    )


def test_lipschitz_power_iteration_matches_the_explicit_jacobian() -> None:
    weights = tiny_weights(0, heads=2, d_model=4, d_head=3, size=0.8)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(weights, x).reshape(20, 20)
    exact = torch.linalg.matrix_norm(jacobian, ord=2).item()
    estimate = lipschitz_estimate(
        weights, x, iterations=300, generator=torch.Generator().manual_seed(2)
    )
    assert estimate == pytest.approx(exact, rel=1e-4)


def test_attention_weights_reproduce_a_transformer_lens_layer() -> None:
    task = toy_tasks.get("assoc_recall", vocab_size=16, n_pairs=2, seq_len=8)
    model = build_model(task, ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4)).double()
    attn = model.blocks[0].attn
    weights = AttentionWeights.from_transformer_lens(attn)
    x = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(weights(x[0]), attn(x, x, x)[0].detach())


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(1, 3),
    st.integers(2, 6),
    st.floats(0.1, 3.0),
    st.floats(0.1, 5.0),
)
def test_bound_is_above_the_estimate(
    seed: int, heads: int, n: int, size: float, input_size: float
) -> None:
    weights = tiny_weights(seed, heads=heads, d_model=4, d_head=3, size=size)
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    x = x * input_size
    estimate = lipschitz_estimate(
        weights, x, iterations=60, generator=torch.Generator().manual_seed(0)
    )
    assert analytic_bound(weights, x) >= estimate


def test_focus_quantities_on_hand_made_rows() -> None:
    scores = torch.tensor(
        [[4.0, 1.0, 3.0, -2.0, 0.0], [0.5, 2.0, -1.0, 1.5, 9.0], [1.0, 1.0, 1.0, 1.0, 1.0]],
        dtype=torch.float64,
    )
    keep = torch.tensor(
        [[True, False, True, False, False], [True, True, False, True, False], [True] * 5]
    )
    full = torch.tensor([[True] * 5, [True, True, True, True, False], [True] * 5])
    out = focus_quantities(scores, keep, full)
    torch.testing.assert_close(
        out["delta_full"], torch.tensor([6.0, 3.0, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        out["delta_sparse"], torch.tensor([1.0, 1.5, 0.0], dtype=torch.float64)
    )
    # row 0: min kept 3 - max unkept 1; row 1: min kept 0.5 - unkept visible -1 (9 is masked)
    torch.testing.assert_close(
        out["separation"], torch.tensor([2.0, 1.5, math.inf], dtype=torch.float64)
    )
    torch.testing.assert_close(out["c1"][:2], torch.tensor([1 / 6, 0.5], dtype=torch.float64))
    torch.testing.assert_close(out["c2"][:2], torch.tensor([1 / 3, 0.5], dtype=torch.float64))
    assert out["beta_keys"].tolist() == [3, 2, 2, 2, 1]
    assert out["beta"].tolist() == [3, 3, 3]
    torch.testing.assert_close(
        out["sink_ratio"], torch.tensor([3 / 2, 1.0, 3 / 5], dtype=torch.float64)
    )


def test_focus_quantities_of_top_k_use_the_top_k_gap() -> None:
    scores = random_rows(6, 10, 7)
    keep = scores >= top_k_threshold(scores, 4).unsqueeze(-1)
    out = focus_quantities(scores, keep)
    ordered = scores.sort(-1, descending=True).values
    torch.testing.assert_close(out["separation"], ordered[:, 3] - ordered[:, 4])
    torch.testing.assert_close(out["delta_sparse"], ordered[:, 0] - ordered[:, 3])
    torch.testing.assert_close(out["delta_full"], ordered[:, 0] - ordered[:, -1])


def scalar_conditions(d: float, c1: float, c2: float, beta: float) -> tuple[bool, bool]:
    w = c1 + (1 / d) * math.log(2 * (1 + 1 / (d * c2))) < 1
    lhs = c1 + (1 / d) * math.log(d * (1 + beta) * (1 + 1 / (d * c2)) + beta)
    return w, lhs < 1 + (1 / d) * math.log(d + 1)


def test_topk_stability_conditions_match_the_scalar_formulas() -> None:
    generator = torch.Generator().manual_seed(8)
    d = torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0], dtype=torch.float64)
    d = d.repeat_interleave(50)
    c1 = torch.rand(d.shape, generator=generator, dtype=torch.float64)
    c2 = torch.rand(d.shape, generator=generator, dtype=torch.float64) * 0.99 + 0.01
    beta = torch.randint(0, 8, d.shape, generator=generator).double() / 5
    result = topk_stability_conditions(d, c1, c2, beta)
    expected = [
        scalar_conditions(*values)
        for values in zip(*(t.tolist() for t in (d, c1, c2, beta)), strict=True)
    ]
    assert result["w"].tolist() == [w for w, _ in expected]
    assert result["x"].tolist() == [x for _, x in expected]
    assert result["w"].any() and not result["w"].all() and result["x"].any()
    # one point by hand: d = 16, c1 = 0.1, c2 = 0.5: 0.1 + ln(2 (1 + 1/8)) / 16 = 0.1506 < 1
    assert topk_stability_conditions(16.0, 0.1, 0.5, 1.0)["w"].item()
    assert not topk_stability_conditions(0.25, 0.9, 0.1, 1.0)["w"].item()
    ratios = topk_stability_ratios(16.0, 0.1, 0.5, 1.0)
    assert ratios["w"].item() == pytest.approx(0.1 + math.log(2.25) / 16)
    assert ratios["x"].item() == pytest.approx(
        0.1 + (math.log(16 * 2 * 1.125 + 1) - math.log(17)) / 16
    )


@pytest.mark.parametrize(
    ("task_name", "config"),
    [
        ("assoc_recall", ModelConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16)),
        (
            "assoc_recall",
            ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, positional="rotary"),
        ),
        ("single_location", ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16)),
    ],
)
def test_model_lipschitz_estimate_matches_the_explicit_jacobian(
    task_name: str, config: ModelConfig
) -> None:
    task = (
        toy_tasks.get(task_name, vocab_size=16, n_pairs=2, seq_len=8)
        if task_name == "assoc_recall"
        else toy_tasks.get(task_name)
    )
    model = build_model(task, config).double()
    generator = torch.Generator().manual_seed(0)
    if task.kind == "tokens":
        inputs = torch.randint(0, task.vocab_size, (1, 6), generator=generator)
    else:
        inputs = torch.randn(1, 6, task.d_input, generator=generator, dtype=torch.float64)
    residual = model.input_to_embed(inputs)[0].detach()
    jacobian = torch.autograd.functional.jacobian(lambda x: model(x, start_at_layer=0), residual)
    exact = torch.linalg.matrix_norm(jacobian.reshape(-1, residual.numel()), ord=2).item()
    estimate = model_lipschitz_estimate(
        model, inputs, n_iter=60, generator=torch.Generator().manual_seed(1)
    )
    assert estimate == pytest.approx(exact, rel=1e-4)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("q_len", "kv_len", "chunk"), [(23, 23, 5), (10, 17, 4), (7, 7, 64)])
def test_row_stability_from_qk_matches_the_unchunked_computation(
    causal: bool, q_len: int, kv_len: int, chunk: int
) -> None:
    generator = torch.Generator().manual_seed(q_len + kv_len)
    q = torch.randn(2, 4, q_len, 8, generator=generator) * 2
    k = torch.randn(2, 2, kv_len, 8, generator=generator) * 2
    scale = 0.3
    streamed = row_stability_from_qk(
        q, k, causal=causal, scale=scale, chunk=chunk, k_top=3, compute_dtype=torch.float64
    )
    scores = scaled_scores(q, k, scale, torch.float64)
    keep = visible(q, k, causal).expand_as(scores)
    probs = sparse_probs(scores, keep)
    torch.testing.assert_close(streamed["jacobian_norm"], jacobian_spectral_norm(probs))
    torch.testing.assert_close(streamed["jacobian_frobenius"], jacobian_frobenius_norm(probs))
    torch.testing.assert_close(streamed["top_k_margin"], top_k_margin(scores, 3, keep))
    # float32 scores (the default): `row_stability` up to the rounding of the scores
    single = row_stability_from_qk(q, k, causal=causal, scale=scale, chunk=chunk, k_top=3)
    capture = LayerCapture(0, q=q, k=k, v=k, z=q, scale=scale, causal=causal, key_padding=None)
    dense = row_stability(capture)
    torch.testing.assert_close(
        single["jacobian_norm"], dense["jacobian_norm"], rtol=1e-5, atol=1e-6
    )
    assert streamed["jacobian_norm"].shape == (2, 4, q_len)
    if causal and q_len == kv_len:
        assert torch.isinf(streamed["top_k_margin"][..., :3]).all()


@pytest.mark.parametrize(
    ("method", "hyper_parameters"),
    [
        ("top_k", {"k": 3}),
        ("top_p", {"p": 0.8}),
        ("block_local", {"k": 5}),
        ("block_top_k", {"k": 1}),
    ],
)
def test_streamed_stability_over_a_selection_equals_the_materialised_one(
    method: str, hyper_parameters: dict
) -> None:
    """The softmax over a method's own selection (a row threshold from its scores, or whole
    blocks), streamed in chunks that cut through its blocks, equals the one over the whole
    materialised selection."""
    generator = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 37, 8, generator=generator, dtype=torch.float64) * 2
    k = torch.randn(2, 4, 37, 8, generator=generator, dtype=torch.float64) * 2
    selection = workbench.sparse.get(method, **hyper_parameters).select(
        q, k, causal=True, scale=0.4, block_size=16
    )
    streamed = row_stability_from_qk(
        q,
        k,
        causal=True,
        scale=0.4,
        selection=selection,
        chunk=5,
        k_top=3,
        compute_dtype=torch.float64,
    )
    scores = scaled_scores(q, k, 0.4, torch.float64)
    used = selection.to_dense(scores) & visible(q, k, True)
    probs = sparse_probs(scores, used)
    torch.testing.assert_close(streamed["jacobian_norm"], jacobian_spectral_norm(probs))
    torch.testing.assert_close(streamed["jacobian_frobenius"], jacobian_frobenius_norm(probs))
    dense = row_stability_from_qk(
        q, k, causal=True, scale=0.4, k_top=3, compute_dtype=torch.float64
    )
    torch.testing.assert_close(streamed["top_k_margin"], dense["top_k_margin"])
    assert not torch.equal(streamed["jacobian_norm"], dense["jacobian_norm"])


@pytest.fixture(scope="module")
def stability_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stability") / "run"
    config = TrainConfig(
        task="assoc_recall",
        task_overrides={"vocab_size": 16, "n_pairs": 3, "seq_len": 12},
        model=ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, attn_only=True),
        steps=20,
        eval_every=10,
        eval_batch_size=32,
        batch_size=16,
        eval_metrics=("stability",),
        sparse={"method": "top_k", "hparams": {"k": 3}},
    )
    train(config, out, progress=False)
    return out


def test_train_logs_stability(stability_run: Path) -> None:
    logged = [r for r in read_metrics(stability_run / "metrics.jsonl") if "stability" in r]
    assert [r["step"] for r in logged] == [0, 10, 20]
    for record in logged:
        for name in ("jacobian_norm", "method_jacobian_norm", "top_k_margin"):
            values = torch.tensor(record["stability"][name])
            assert values.shape == (2, 2) and torch.isfinite(values).all()
        assert (torch.tensor(record["stability"]["jacobian_norm"]) <= 0.5).all()


def test_cli_stability_writes_curves(stability_run: Path) -> None:
    result = CliRunner().invoke(app, ["stability", str(stability_run.parent)])
    assert result.exit_code == 0, result.output
    figures = sorted((stability_run.parent / "figures").glob("stability_*.html"))
    assert figures and all(path.stat().st_size > 0 for path in figures)
