"""The theory of the emergence toy model (`workbench.emergence_toy.model`) on the single-location
task: the expected loss in closed form, the early dynamics of gradient flow, the leading-order
plateau length and the gradient-flow loss curve.

Notation: tokens ``x_t ~ N(0, I/d)``, target ``y* = W* x_rel`` (``n = ||W*||_F^2``, about ``d``),
the relevant vector at the last B positions, the special vector ``v`` with probability ``p``;
``s = softmax(a)``, ``A = sum of s over the B copies``, ``M = A W - W*``. Then

    L = 1/2 [ (1 - p) ||M||^2 / d + p ||M v||^2 + (sum_{t not a copy} s_t^2) ||W||^2 / d ]

(the other tokens are independent noise of covariance ``I/d``). From ``W = 0, a = 0`` the weights
stay ``W = c W*`` (for ``p = 0``) and the logits of the non-copies stay equal, so two numbers
describe the dynamics: ``c`` and ``Delta a`` (a copy's logit minus another's).

Early, attention is uniform (``s_t = 1/T``, ``A = B/T``) and gradient flow with learning rate 1
(time = steps) solves in closed form (`early_dynamics`):

    c(t) = (A / k) (1 - exp(-k t / d)),      k = (B^2 + T - B) / T^2,
    dDelta a / dt = m (n / (d T)) (c - (A - 1/T) c^2),

with ``m = 1`` for free logits and ``m = B (1 - A) + A`` for logits shared by the copies. For
B = 1: ``c = 1 - exp(-t / (d T))`` and ``Delta a = n/(d T) [t - d T (1 - exp(-t / (d T)))]``,
about ``n t^2 / (2 d^2 T^2)``.

Leading order (`plateau_estimate`): while ``c`` is small, ``u = c sqrt(n)`` grows as
``du/dt = A / sqrt(d)`` and ``dDelta a / du = u`` (shared) or ``u / B`` (free), so
``A = (B/T) exp(u^2 / 2)`` (shared) and the escape time ``int du / (du/dt)`` is finite:

    T_plateau = sqrt(pi / 2) sqrt(d) T / B          (shared: the copies act as one token)
    T_plateau = sqrt(pi / 2) sqrt(d) T / sqrt(B)     (free: each copy's logit learns alone)

(B = 1: 1.25 sqrt(d) T; the paper's fit of its simulations is 1.51 T^0.99 B^-0.99 d^0.49, the
extra time being the descent from the escape to the 0.2 threshold). `gradient_flow` integrates
the exact expected-loss dynamics (no approximation) for the curve drawn beside the simulations.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from toy_tasks.base import check_float, check_int
from toy_tasks.emergence import SingleLocationRegression
from workbench.emergence_toy.model import (
    EmergenceToy,
    EmergenceToyConfig,
    build_emergence_toy,
    check_task,
)


def expected_loss(
    model: EmergenceToy, task: SingleLocationRegression, cross_sample_p: float | None = None
) -> torch.Tensor:
    """``1/2 E ||y - y*||^2`` of ``model`` on ``task`` in closed form (a differentiable scalar in
    the model's dtype), with the special vector at probability ``cross_sample_p`` (None: the
    task's; 0 gives the test loss of the paper's cross-sample experiments)."""
    task = check_task(task)
    p = task.cross_sample_p if cross_sample_p is None else cross_sample_p
    check_float("cross_sample_p", p, 0.0, 1.0)
    weights = model.W
    target = task.target_matrix(weights.device).to(weights.dtype)  # [d, d]
    special = task.special_vector(weights.device).to(weights.dtype)  # [d]
    s = model.attention()  # [T]
    copies = task.burstiness
    mismatch = s[-copies:].sum() * weights - target  # M [d, d]
    d = task.d
    fresh = mismatch.square().sum() / d
    repeated = (mismatch @ special).square().sum()
    noise = s[:-copies].square().sum() * weights.square().sum() / d
    return 0.5 * ((1 - p) * fresh + p * repeated + noise)


def initial_loss(task: SingleLocationRegression, cross_sample_p: float | None = None) -> float:
    """The loss of the zero predictor (``W = 0``): ``n / (2d)`` at ``p = 0``, about 0.5."""
    model = build_emergence_toy(task, EmergenceToyConfig()).double()
    with torch.no_grad():
        return float(expected_loss(model, task, cross_sample_p))


def early_dynamics(
    times: np.ndarray, task: SingleLocationRegression, repeat_logits: str = "free"
) -> tuple[np.ndarray, np.ndarray]:
    """``(c [m], Delta a [m])`` of gradient flow (learning rate 1) at ``times [m]`` under uniform
    attention (the module docstring's closed form; ``p = 0``): exact while ``Delta a`` is small."""
    task = check_task(task)
    times = np.asarray(times, dtype=np.float64)
    T, d, B = task.seq_len, task.d, task.burstiness
    n = float(task.target_matrix().double().square().sum())
    A = B / T
    k = (B * B + T - B) / T**2
    rate, scale = k / d, A / k  # c = scale (1 - exp(-rate t))
    decay = -np.expm1(-rate * times)
    c = scale * decay
    integral_c = scale * (times - decay / rate)
    integral_c2 = scale**2 * (times - 2 * decay / rate - np.expm1(-2 * rate * times) / (2 * rate))
    m = 1.0 if repeat_logits == "free" else B * (1 - A) + A
    delta = m * n / (d * T) * (integral_c - (A - 1 / T) * integral_c2)
    return c, delta


def plateau_estimate(seq_len: int, d: int, burstiness: int, repeat_logits: str = "free") -> float:
    """The leading-order plateau length in steps (learning rate 1) of the module docstring:
    ``sqrt(pi/2) sqrt(d) T / B`` (shared logits) or ``/ sqrt(B)`` (free)."""
    check_int("seq_len", seq_len, 1)
    check_int("d", d, 1)
    check_int("burstiness", burstiness, 1, seq_len)
    repeat = burstiness if repeat_logits == "shared" else math.sqrt(burstiness)
    return math.sqrt(math.pi / 2) * math.sqrt(d) * seq_len / repeat


def gradient_flow(
    task: SingleLocationRegression,
    config: EmergenceToyConfig,
    *,
    lr: float = 1.0,
    steps: int,
    every: int = 1,
    until: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch gradient descent on the expected loss (float64, from ``W = 0, a = 0``, the
    training loss at the task's ``p``): ``(steps [m], test losses [m])`` every ``every`` steps
    (the test loss at ``p = 0``), stopping after ``steps`` or once the test loss is below
    ``until``."""
    check_int("steps", steps, 0)
    check_int("every", every, 1)
    check_float("lr", lr, 0.0)
    model = build_emergence_toy(task, config).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    logged_steps, losses = [], []
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            with torch.no_grad():
                test = float(expected_loss(model, task, 0.0))
            logged_steps.append(step)
            losses.append(test)
            if until is not None and test < until:
                break
        if step == steps:
            break
        optimizer.zero_grad()
        expected_loss(model, task).backward()
        optimizer.step()
    return np.array(logged_steps, dtype=np.float64), np.array(losses)
