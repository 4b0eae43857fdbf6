"""Tests of the in-context regression baselines against brute-force numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toy_tasks.base import Batch
from toy_tasks.baselines import (
    averaging_curve,
    error_curve,
    gradient_descent_curve,
    gradient_descent_predictor,
    knn_curve,
    knn_predictor,
    least_squares_curve,
    least_squares_predictor,
    prefix_predictions,
    regression_data,
    ridge_curve,
    ridge_predictor,
)
from toy_tasks.linear_regression import LinearRegressionICL

D = 4


def sample(task: LinearRegressionICL, batch_size: int, seed: int = 0) -> Batch:
    return task.sample(batch_size, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def batch() -> Batch:
    return sample(LinearRegressionICL(d=D, n_points=3 * D), batch_size=2000)


def numpy_data(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    x, y = regression_data(batch)
    return x.numpy(), y.numpy()


def test_curve_shape_dtype_and_zero_for_perfect_predictions(batch: Batch) -> None:
    curve = least_squares_curve(batch)
    assert curve.shape == (3 * D,) and curve.dtype == torch.float64
    assert torch.all(error_curve(batch, batch.targets[:, 0::2, 0]) == 0)


def test_least_squares_reaches_zero_at_d_and_decreases(batch: Batch) -> None:
    curve = least_squares_curve(batch)
    assert torch.all(curve[D:] < 1e-10)
    assert curve[0] > curve[D // 2] > curve[D - 1] > curve[D]
    # Expected error of minimum-norm least squares with k < d examples: (d - k) / d.
    torch.testing.assert_close(
        curve[:D], 1 - torch.arange(D) / D, atol=0.1, rtol=0, check_dtype=False
    )


def test_least_squares_matches_numpy() -> None:
    small = sample(LinearRegressionICL(d=3, n_points=6), batch_size=3)
    x, y = numpy_data(small)
    expected = np.zeros_like(y)
    for b in range(3):
        for k in range(1, 6):
            expected[b, k] = x[b, k] @ np.linalg.lstsq(x[b, :k], y[b, :k], rcond=None)[0]
    actual = prefix_predictions(small, least_squares_predictor).numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-8)


def test_averaging_is_worse_than_least_squares(batch: Batch) -> None:
    assert averaging_curve(batch)[2 * D] > 10 * least_squares_curve(batch)[2 * D] + 0.1


def test_knn_matches_brute_force() -> None:
    small = sample(LinearRegressionICL(d=3, n_points=8), batch_size=3)
    x, y = numpy_data(small)
    expected = np.zeros_like(y)
    for b in range(3):
        for n in range(1, 8):
            nearest = np.argsort(np.linalg.norm(x[b, :n] - x[b, n], axis=1))[:3]
            expected[b, n] = y[b, nearest].mean()
    np.testing.assert_allclose(prefix_predictions(small, knn_predictor(3)).numpy(), expected)
    np.testing.assert_allclose(
        knn_curve(small).numpy(), ((expected - y) ** 2).mean(axis=0) / 3, rtol=1e-12
    )


def test_ridge_approaches_least_squares_as_alpha_vanishes(batch: Batch) -> None:
    ridge = prefix_predictions(batch, ridge_predictor(1e-10))
    least_squares = prefix_predictions(batch, least_squares_predictor)
    torch.testing.assert_close(ridge[:, D + 1 :], least_squares[:, D + 1 :], atol=1e-5, rtol=1e-5)


def test_strong_ridge_predicts_nearly_zero(batch: Batch) -> None:
    torch.testing.assert_close(
        ridge_curve(batch, 1e9), error_curve(batch, torch.zeros(2000, 3 * D))
    )


def test_bad_baseline_parameters() -> None:
    with pytest.raises(ValueError, match="alpha"):
        ridge_predictor(0.0)
    with pytest.raises(ValueError, match="alpha"):
        ridge_predictor(-1.0)
    with pytest.raises(ValueError, match="k"):
        knn_predictor(0)


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 5),
    extra=st.integers(1, 4),
    data=st.data(),
    seed=st.integers(0, 2**31),
)
def test_property_least_squares_exact_from_d_active(
    d: int, extra: int, data: st.DataObject, seed: int
) -> None:
    d_active = data.draw(st.integers(1, d))
    task = LinearRegressionICL(d=d, n_points=d_active + extra, d_active=d_active)
    curve = least_squares_curve(sample(task, batch_size=4, seed=seed))
    assert curve.shape == (task.n_points,)
    assert torch.all(curve[d_active:] < 1e-8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_curves_on_cuda_match_cpu() -> None:
    cpu = sample(LinearRegressionICL(d=3, n_points=8), batch_size=16)
    cuda = cpu.to("cuda")
    for curve in (least_squares_curve, averaging_curve, knn_curve):
        torch.testing.assert_close(curve(cuda).cpu(), curve(cpu))
    torch.testing.assert_close(ridge_curve(cuda, 0.1).cpu(), ridge_curve(cpu, 0.1))


def test_gradient_descent_equals_a_hand_computation() -> None:
    """Two prompts, d = 2, k = 2: w1 = eta X^T y / k, w2 = w1 - eta (X^T X w1 / k - X^T y / k),
    eta = 1 / lambda_max(X^T X / k) or a fixed step."""
    x = torch.tensor([[[1.0, 0.0], [1.0, 2.0]], [[2.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    y = torch.tensor([[1.0, 3.0], [4.0, -1.0]], dtype=torch.float64)
    query = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    # Prompt 0: X^T X / 2 = [[1, 1], [1, 2]], eigenvalues (3 +- sqrt(5)) / 2; X^T y / 2 = [2, 3].
    # Prompt 1: X^T X / 2 = diag(2, 0.5), lambda_max 2; X^T y / 2 = [4, -0.5].
    eta = torch.tensor([2 / (3 + 5**0.5), 0.5], dtype=torch.float64)
    moment = torch.tensor([[2.0, 3.0], [4.0, -0.5]], dtype=torch.float64)
    gram = torch.tensor([[[1.0, 1.0], [1.0, 2.0]], [[2.0, 0.0], [0.0, 0.5]]], dtype=torch.float64)
    w1 = eta[:, None] * moment
    w2 = w1 - eta[:, None] * (torch.einsum("bij,bj->bi", gram, w1) - moment)
    one = gradient_descent_predictor(1)(x, y, query)
    two = gradient_descent_predictor(2)(x, y, query)
    torch.testing.assert_close(one, (w1 * query).sum(-1))
    torch.testing.assert_close(two, (w2 * query).sum(-1))
    # Prompt 1 by hand: w1 = 0.5 [4, -0.5] = [2, -0.25], prediction 2 + 0.25 = 2.25.
    assert float(one[1]) == pytest.approx(2.25)
    fixed = gradient_descent_predictor(1, lr=0.1)(x, y, query)
    torch.testing.assert_close(fixed, 0.1 * (moment * query).sum(-1))


def test_one_gradient_step_of_size_one_is_averaging(batch: Batch) -> None:
    torch.testing.assert_close(gradient_descent_curve(batch, 1, lr=1.0), averaging_curve(batch))


def test_gradient_descent_approaches_least_squares_with_more_steps(batch: Batch) -> None:
    """Past k = d the prompt's loss is strongly convex: more steps, closer to least squares."""
    many = 3 * D - 1
    errors = [float(gradient_descent_curve(batch, steps)[many]) for steps in (1, 5, 50)]
    assert errors[0] > errors[1] > errors[2] > float(least_squares_curve(batch)[many])
    assert errors[2] < 0.05
    with pytest.raises(ValueError, match="steps"):
        gradient_descent_predictor(0)
    with pytest.raises(ValueError, match="lr"):
        gradient_descent_predictor(1, lr=0.0)
