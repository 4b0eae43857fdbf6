"""Classical in-context regression baselines on `LinearRegressionICL` batches: Garg et al.'s least
squares, k-nearest neighbours and averaging, and Akyurek et al.'s ridge regression and steps of
gradient descent.

Every curve is the error a trained model is evaluated on (Garg et al.): the squared error of the
prediction of ``y_{k+1}`` from the first ``k`` in-context pairs, for ``k = 0 .. n_points - 1``,
averaged over the batch and divided by ``d`` -> ``[n_points]`` float64. A model's own curve is
``error_curve(batch, outputs[:, 0::2, 0])`` (its predictions at the x-tokens).

A predictor maps ``(x_prefix [batch, k, d], y_prefix [batch, k], x_query [batch, d])`` to the
predictions ``[batch]``; with ``k = 0`` every baseline predicts 0. Computation is in float64 on the
batch's device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from toy_tasks.base import Batch, check_float, check_int

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def regression_data(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [batch, n_points, d]`` and ``y [batch, n_points]`` (float64) read from the tokens."""
    inputs = batch.inputs.to(torch.float64)
    return inputs[:, 0::2, :-1], inputs[:, 1::2, 0]


def error_curve(batch: Batch, predictions: torch.Tensor) -> torch.Tensor:
    """Squared error / d of ``predictions [batch, n_points]``, per prefix -> ``[n_points]``."""
    x, y = regression_data(batch)
    return (predictions.to(torch.float64) - y).square().mean(dim=0) / x.shape[-1]


def prefix_predictions(batch: Batch, predictor: Predictor) -> torch.Tensor:
    """``[batch, n_points]``: column ``k`` predicts ``y_{k+1}`` from the first ``k`` pairs."""
    x, y = regression_data(batch)
    predictions = torch.zeros_like(y)
    for k in range(1, y.shape[1]):
        predictions[:, k] = predictor(x[:, :k], y[:, :k], x[:, k])
    return predictions


def baseline_curve(batch: Batch, predictor: Predictor) -> torch.Tensor:
    """Error curve ``[n_points]`` of ``predictor``."""
    return error_curve(batch, prefix_predictions(batch, predictor))


def _predict_linear(w: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """``w [batch, d]`` . ``x_query [batch, d]`` -> ``[batch]``."""
    return (w * x_query).sum(dim=-1)


def least_squares_predictor(
    x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor
) -> torch.Tensor:
    """Minimum-norm least squares (``w = pinv(X) y``, exact interpolation when ``k < d``)."""
    w = (torch.linalg.pinv(x) @ y.unsqueeze(-1)).squeeze(-1)
    return _predict_linear(w, x_query)


def ridge_predictor(alpha: float) -> Predictor:
    """Ridge regression ``w = (X^T X + alpha I)^-1 X^T y`` with ``alpha > 0``."""
    check_float("alpha", alpha, 0.0)
    if alpha == 0.0:
        raise ValueError("alpha must be > 0 (use least_squares_curve for alpha = 0)")

    def predict(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        gram = x.transpose(1, 2) @ x
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        rhs = (x.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1)
        return _predict_linear(torch.linalg.solve(gram + alpha * eye, rhs), x_query)

    return predict


def knn_predictor(k: int = 3) -> Predictor:
    """Mean ``y`` of the ``k`` prefix points nearest (Euclidean) to the query (all when fewer)."""
    check_int("k", k, 1)

    def predict(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        distances = (x - x_query.unsqueeze(1)).square().sum(dim=-1)
        nearest = distances.topk(min(k, x.shape[1]), dim=1, largest=False).indices
        return y.gather(1, nearest).mean(dim=1)

    return predict


def gradient_descent_predictor(steps: int = 1, lr: float | None = None) -> Predictor:
    """Akyurek et al.'s gradient-descent learner: ``steps`` steps of full-batch gradient descent
    from ``w = 0`` on the prompt's loss ``L(w) = 1/(2k) sum_i (w . x_i - y_i)^2``:
    ``w <- w - eta X^T (X w - y) / k``. ``lr``: the step ``eta`` (> 0); None takes
    ``eta = 1 / lambda_max(X^T X / k)`` per prompt (the textbook step of an L-smooth loss: stable
    for every ``k``). One step with ``eta = 1`` is Garg's averaging."""
    check_int("steps", steps, 1)
    if lr is not None:
        check_float("lr", lr, 0.0)
        if lr == 0.0:
            raise ValueError("lr must be > 0 or None (the step 1 / lambda_max)")

    def predict(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        k = x.shape[1]
        gram = x.transpose(1, 2) @ x / k  # [batch, d, d]
        if lr is None:
            eta = 1.0 / torch.linalg.eigvalsh(gram)[:, -1:]  # [batch, 1]
        else:
            eta = torch.full((x.shape[0], 1), lr, dtype=x.dtype, device=x.device)
        moment = (x.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1) / k  # X^T y / k: [batch, d]
        w = torch.zeros_like(moment)
        for _ in range(steps):
            w = w - eta * ((gram @ w.unsqueeze(-1)).squeeze(-1) - moment)
        return _predict_linear(w, x_query)

    return predict


def averaging_predictor(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """Garg's "averaging": ``w = mean_i y_i x_i``."""
    return _predict_linear((y.unsqueeze(-1) * x).mean(dim=1), x_query)


def least_squares_curve(batch: Batch) -> torch.Tensor:
    """Error curve ``[n_points]`` of minimum-norm least squares."""
    return baseline_curve(batch, least_squares_predictor)


def ridge_curve(batch: Batch, alpha: float) -> torch.Tensor:
    """Error curve ``[n_points]`` of ridge regression with penalty ``alpha``."""
    return baseline_curve(batch, ridge_predictor(alpha))


def knn_curve(batch: Batch, k: int = 3) -> torch.Tensor:
    """Error curve ``[n_points]`` of ``k``-nearest-neighbour averaging."""
    return baseline_curve(batch, knn_predictor(k))


def gradient_descent_curve(batch: Batch, steps: int = 1, lr: float | None = None) -> torch.Tensor:
    """Error curve ``[n_points]`` of `gradient_descent_predictor` (Akyurek et al.)."""
    return baseline_curve(batch, gradient_descent_predictor(steps, lr))


def averaging_curve(batch: Batch) -> torch.Tensor:
    """Error curve ``[n_points]`` of Garg's averaging estimator."""
    return baseline_curve(batch, averaging_predictor)
