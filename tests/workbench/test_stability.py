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
from kernels.reference import top_k_threshold, top_p_threshold
from workbench.cli import app
from workbench.metrics.stability import (
    AttentionWeights,
    analytic_bound,
    flip_rate,
    jacobian_frobenius_norm,
    jacobian_spectral_norm,
    lipschitz_estimate,
    softmax_jacobian,
    sparse_probs,
    top_k_margin,
    top_p_margin,
)
from workbench.models import ModelConfig, build_model
from workbench.train import TrainConfig, read_metrics, train


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
        stability_metrics=True,
        sparse_method="top_k",
        sparse_hparams={"k": 3},
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
