"""Analysis of training curves: emergence times and power-law fits.

Emergence (Zucchet et al., "The emergence of sparse attention", arXiv 2505.17863): the emergence
time of a run is the time its test loss needs to reach ``0.2 x`` its initial value; for in-context
associative recall it is the number of steps to reach 5% accuracy. The paper fits emergence times
with power laws such as ``T_plateau = 1.51 T^0.99 B^-0.99 d^0.49``; `fit_power_law` fits
``log y = log c + sum_i a_i log x_i`` by least squares (by maximum likelihood when some times are
only known to exceed a bound: runs stopped before they emerged) and gives confidence intervals of
the exponents, `compare_exponents` puts them next to the paper's.

Curves are logged at arbitrary (increasing) steps; every function takes ``steps [n]`` and
``values [n]`` as array-likes and ignores NaN values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_SMOOTHING = 5
"""Window (logged points) of the centred running median applied before a threshold crossing."""

DEFAULT_PERSIST = 3
"""Consecutive logged points the smoothed curve must stay past a threshold for a crossing."""


def _clean_series(steps: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``steps [n]``, ``values [n]`` as float64 with NaN values dropped; steps must increase."""
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if steps.ndim != 1 or steps.shape != values.shape:
        raise ValueError(
            f"steps and values must be 1-D of one length, got {steps.shape} and {values.shape}"
        )
    keep = ~np.isnan(values)
    steps, values = steps[keep], values[keep]
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    return steps, values


def running_median(values: ArrayLike, window: int) -> np.ndarray:
    """Centred running median of ``values [n]`` over ``window`` points (odd, >= 1); the window is
    truncated at both ends. On a monotone curve it returns the curve unchanged, so it removes
    isolated spikes without shifting a crossing."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 1, got {window}")
    values = np.asarray(values, dtype=np.float64)
    half = window // 2
    return np.array(
        [np.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]
    )


def threshold_time(
    steps: ArrayLike,
    values: ArrayLike,
    threshold: float,
    direction: Literal["above", "below"] = "above",
    *,
    smoothing: int = DEFAULT_SMOOTHING,
    persist: int = DEFAULT_PERSIST,
) -> float | None:
    """First step at which a logged curve reaches ``threshold``, robust to noise.

    Definition: let ``s`` be the centred running median of ``values`` over ``smoothing`` logged
    points (`running_median`; ``smoothing=1`` keeps the raw values). The crossing index ``i`` is
    the first index such that ``s[i], ..., s[i + persist - 1]`` all reach the threshold (``>=`` for
    ``direction="above"``, ``<=`` for ``"below"``); near the end of the curve, all remaining points
    must reach it. The returned time interpolates linearly between ``(steps[i-1], s[i-1])`` and
    ``(steps[i], s[i])`` to the step where ``s`` equals the threshold (``steps[0]`` if ``i = 0``).

    Args:
        steps: ``[n]`` strictly increasing training steps.
        values: ``[n]`` the metric at those steps (NaN entries are ignored).
        threshold: the level to reach, in the units of ``values``.
        direction: ``"above"`` (accuracy-like) or ``"below"`` (loss-like).
        smoothing: odd window of the running median, in logged points.
        persist: number of consecutive smoothed points that must stay past the threshold.

    Returns:
        The crossing step (float, in the units of ``steps``), or None if the curve never reaches
        the threshold in that sense.
    """
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', got {direction!r}")
    if persist < 1:
        raise ValueError(f"persist must be >= 1, got {persist}")
    steps, values = _clean_series(steps, values)
    smoothed = running_median(values, smoothing)
    reached = smoothed >= threshold if direction == "above" else smoothed <= threshold
    for i in np.flatnonzero(reached):
        if reached[i : i + persist].all():
            return _interpolate_crossing(steps, smoothed, int(i), threshold)
    return None


def starts_past(
    steps: ArrayLike,
    values: ArrayLike,
    threshold: float,
    direction: Literal["above", "below"] = "above",
    *,
    smoothing: int = DEFAULT_SMOOTHING,
) -> bool:
    """Whether a logged curve is already past ``threshold`` at its first logged step (``>=`` for
    ``direction="above"``, ``<=`` for ``"below"``), read on the same running median as
    `threshold_time`. Then no time to reach the threshold exists: e.g. an accuracy threshold
    below the accuracy at initialisation (chance level), where `threshold_time` would give the
    first step. False for a curve without finite values."""
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', got {direction!r}")
    steps, values = _clean_series(steps, values)
    if values.size == 0:
        return False
    first = float(running_median(values, smoothing)[0])
    return first >= threshold if direction == "above" else first <= threshold


def _interpolate_crossing(
    steps: np.ndarray, smoothed: np.ndarray, index: int, threshold: float
) -> float:
    """Step between ``index - 1`` and ``index`` where the piecewise-linear curve hits
    ``threshold``."""
    if index == 0:
        return float(steps[0])
    before, after = smoothed[index - 1], smoothed[index]
    fraction = (threshold - before) / (after - before)
    return float(steps[index - 1] + fraction * (steps[index] - steps[index - 1]))


def emergence_time(
    steps: ArrayLike,
    losses: ArrayLike,
    *,
    initial: float | None = None,
    fraction: float = 0.2,
    smoothing: int = DEFAULT_SMOOTHING,
    persist: int = DEFAULT_PERSIST,
) -> float | None:
    """Zucchet et al.'s emergence time: the first step at which the (test) loss reaches
    ``fraction x initial`` (0.2 in the paper), found by `threshold_time` (direction ``"below"``,
    running median over ``smoothing`` points, crossing persisting over ``persist`` points, linear
    interpolation between logged steps).

    Args:
        steps: ``[n]`` strictly increasing training steps.
        losses: ``[n]`` positive losses at those steps (NaN entries are ignored).
        initial: the reference loss; default: the first non-NaN logged loss (the loss at
            initialisation when step 0 is logged).
        fraction: target fraction of the initial loss, in (0, 1).

    Returns:
        The emergence step, or None if the loss never reaches the target.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if initial is None:
        _, clean = _clean_series(steps, losses)
        if clean.size == 0:
            raise ValueError("losses hold no finite value")
        initial = float(clean[0])
    if initial <= 0:
        raise ValueError(f"initial loss must be > 0, got {initial}")
    return threshold_time(
        steps, losses, fraction * initial, "below", smoothing=smoothing, persist=persist
    )


@dataclass(frozen=True)
class PowerLawFit:
    """``y = prefactor * prod_i x_i ** exponents[i]``, fitted on log-log data.

    Attributes:
        names: covariate names, in fit order.
        exponents: ``{name: a_i}``.
        log_prefactor: ``log c`` (natural log); ``prefactor = exp(log_prefactor)``.
        standard_errors: ``{name: se(a_i)}`` plus ``"log_prefactor"``.
        intervals: ``{name: (low, high)}`` confidence intervals (t-distribution) of the exponents
            and of ``"log_prefactor"``.
        confidence: the level of ``intervals`` (0.95 by default).
        r2: coefficient of determination of the log-log fit (of the uncensored points).
        n_points: number of fitted points, censored ones included; ``dof = n_points -
            len(names) - 1``.
        n_censored: how many of them are censored (only a lower bound of ``y`` is known).
        covariance: covariance matrix of ``("log_prefactor", *names)``, for intervals of the
            fitted values (`predict_interval`); None in fits read from older results.
    """

    names: tuple[str, ...]
    exponents: dict[str, float]
    log_prefactor: float
    standard_errors: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    confidence: float
    r2: float
    n_points: int
    n_censored: int = 0
    covariance: tuple[tuple[float, ...], ...] | None = None

    @property
    def prefactor(self) -> float:
        """``c`` of ``y = c prod x_i^a_i``."""
        return math.exp(self.log_prefactor)

    @property
    def dof(self) -> int:
        """Residual degrees of freedom."""
        return self.n_points - len(self.names) - 1

    def predict(self, x: Mapping[str, ArrayLike]) -> np.ndarray:
        """``y`` at covariates ``x`` (``{name: [m] positive values}``, every fitted name) ->
        ``[m]``."""
        missing = set(self.names) - set(x)
        if missing:
            raise ValueError(f"predict needs every covariate; missing {sorted(missing)}")
        logs = _log_covariates({name: x[name] for name in self.names}, "x")
        coefficients = np.array([self.exponents[name] for name in self.names])
        return np.exp(self.log_prefactor + logs @ coefficients)

    def predict_interval(self, x: Mapping[str, ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
        """``(low [m], high [m])``: the `confidence` interval of the fitted ``y`` (the law's value,
        not a new observation) at covariates ``x`` (as `predict`), from `covariance` with the
        quantile of the exponents' intervals (t with `dof` degrees of freedom, normal for a
        censored fit). ``ValueError`` for a fit without covariance."""
        from scipy import stats

        if self.covariance is None:
            raise ValueError("this fit has no covariance (read from an older result): no interval")
        missing = set(self.names) - set(x)
        if missing:
            raise ValueError(f"predict_interval needs every covariate; missing {sorted(missing)}")
        logs = _log_covariates({name: x[name] for name in self.names}, "x")
        design = np.column_stack([np.ones(len(logs)), logs])  # [m, 1 + len(names)]
        covariance = np.asarray(self.covariance, dtype=np.float64)
        spread = np.sqrt(np.einsum("mi,ij,mj->m", design, covariance, design))
        quantile = (
            stats.norm.ppf((1 + self.confidence) / 2)
            if self.n_censored
            else stats.t.ppf((1 + self.confidence) / 2, self.dof)
        )
        centre = np.log(self.predict(x))
        return np.exp(centre - quantile * spread), np.exp(centre + quantile * spread)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PowerLawFit:
        """The fit of a `to_dict` summary (e.g. ``results.json``'s ``fit``)."""
        covariance = data.get("covariance")
        return cls(
            names=tuple(data["names"]),
            exponents=dict(data["exponents"]),
            log_prefactor=float(data["log_prefactor"]),
            standard_errors=dict(data["standard_errors"]),
            intervals={name: tuple(bounds) for name, bounds in data["intervals"].items()},
            confidence=float(data["confidence"]),
            r2=float(data["r2"]),
            n_points=int(data["n_points"]),
            n_censored=int(data.get("n_censored", 0)),
            covariance=None if covariance is None else tuple(map(tuple, covariance)),
        )

    def formula(self, digits: int = 2) -> str:
        """E.g. ``"1.51 T^0.99 B^-0.99"``."""
        terms = [f"{name}^{self.exponents[name]:.{digits}f}" for name in self.names]
        return " ".join([f"{self.prefactor:.{digits}f}", *terms])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "formula": self.formula(),
            "names": list(self.names),
            "exponents": self.exponents,
            "prefactor": self.prefactor,
            "log_prefactor": self.log_prefactor,
            "standard_errors": self.standard_errors,
            "intervals": {name: list(bounds) for name, bounds in self.intervals.items()},
            "confidence": self.confidence,
            "r2": self.r2,
            "n_points": self.n_points,
            "n_censored": self.n_censored,
            "covariance": None if self.covariance is None else [list(r) for r in self.covariance],
        }


def _log_covariates(x: Mapping[str, ArrayLike], label: str) -> np.ndarray:
    """``{name: [n] values}`` -> ``log`` design columns ``[n, len(x)]``; values must be > 0."""
    columns = []
    for name, values in x.items():
        array = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if array.ndim != 1:
            raise ValueError(f"{label}[{name!r}] must be 1-D, got shape {array.shape}")
        if not np.all(array > 0):  # also rejects NaN
            raise ValueError(f"{label}[{name!r}] must be > 0 everywhere for a log-log fit")
        columns.append(np.log(array))
    lengths = {len(column) for column in columns}
    if len(lengths) > 1:
        raise ValueError(f"covariates of {label} differ in length: {sorted(lengths)}")
    return np.stack(columns, axis=1)


def fit_power_law(
    x: Mapping[str, ArrayLike],
    y: ArrayLike,
    *,
    confidence: float = 0.95,
    censored: ArrayLike | None = None,
) -> PowerLawFit:
    """Fit of ``log y = log c + sum_i a_i log x_i + noise``.

    Args:
        x: ``{name: [n] positive values}``, one or more covariates (e.g. ``{"T": ..., "B": ...}``).
        y: ``[n]`` positive responses (e.g. emergence times in steps).
        confidence: level of the intervals, in (0, 1).
        censored: ``[n]`` bool, True where ``y`` is only a lower bound (right-censored: e.g. a run
            stopped at step ``y`` before it emerged). None: no point is censored.

    Returns:
        A `PowerLawFit`. Without censored points, least squares: standard errors from
        ``sigma^2 (X^T X)^-1`` with ``sigma^2 = RSS / (n - p)``, intervals
        ``a_i +- t_{(1+confidence)/2, n-p} se(a_i)`` (``p`` = number of covariates + 1). With
        censored points, maximum likelihood of the censored normal (Tobit) model of ``log y``:
        a censored point contributes ``P(log y > log bound)``; standard errors from the inverse
        observed information, normal-quantile intervals.

    Raises:
        ValueError: no covariate, a non-positive value, fewer than ``p + 1`` uncensored points,
            or covariates that are constant or collinear in log space (over the uncensored points).
    """
    from scipy import stats

    if not x:
        raise ValueError("fit_power_law needs at least one covariate")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    names = tuple(x)
    logs = _log_covariates(x, "x")
    log_y = _log_covariates({"y": y}, "y")[:, 0]
    if len(log_y) != len(logs):
        raise ValueError(f"x has {len(logs)} points but y has {len(log_y)}")
    mask = np.zeros(len(log_y), dtype=bool) if censored is None else np.asarray(censored)
    if mask.dtype != np.bool_ or mask.shape != log_y.shape:
        raise ValueError(f"censored must be a bool array of shape {log_y.shape}, got {mask!r}")
    design = np.column_stack([np.ones(len(log_y)), logs])
    n, p = design.shape
    observed = int((~mask).sum())
    if observed <= p:
        raise ValueError(
            f"too few points: {observed} uncensored for {p} parameters "
            f"(need at least {p + 1} for intervals)"
        )
    if np.linalg.matrix_rank(design[~mask]) < p:
        raise ValueError(f"covariates {list(names)} are constant or collinear in log space")
    if mask.any():
        coefficients, covariance = _censored_normal_fit(design, log_y, mask)
        quantile = stats.norm.ppf((1 + confidence) / 2)
    else:
        coefficients, *_ = np.linalg.lstsq(design, log_y, rcond=None)
        rss = float(np.sum((log_y - design @ coefficients) ** 2))
        covariance = rss / (n - p) * np.linalg.inv(design.T @ design)
        quantile = stats.t.ppf((1 + confidence) / 2, n - p)
    errors = np.sqrt(np.diag(covariance))
    half_width = quantile * errors
    residuals = (log_y - design @ coefficients)[~mask]
    tss = float(((log_y[~mask] - log_y[~mask].mean()) ** 2).sum())
    labels = ("log_prefactor", *names)
    return PowerLawFit(
        names=names,
        exponents={name: float(a) for name, a in zip(names, coefficients[1:], strict=True)},
        log_prefactor=float(coefficients[0]),
        standard_errors={label: float(e) for label, e in zip(labels, errors, strict=True)},
        intervals={
            label: (float(c - h), float(c + h))
            for label, c, h in zip(labels, coefficients, half_width, strict=True)
        },
        confidence=confidence,
        r2=1.0 - float(residuals @ residuals) / tss if tss > 0 else float("nan"),
        n_points=n,
        n_censored=int(mask.sum()),
        covariance=tuple(tuple(float(value) for value in row) for row in covariance),
    )


def _censored_normal_fit(
    design: np.ndarray, log_y: np.ndarray, censored: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum likelihood of ``log_y = design @ beta + sigma * N(0, 1)`` where ``log_y`` is a lower
    bound at the ``censored`` rows -> ``(beta [p], covariance of beta [p, p])``."""
    from scipy import optimize

    observed = ~censored
    start, *_ = np.linalg.lstsq(design[observed], log_y[observed], rcond=None)
    spread = np.std(log_y[observed] - design[observed] @ start)
    if spread < 1e-12 and np.all(design[censored] @ start >= log_y[censored]):
        # An exact law that every bound allows: the likelihood grows without limit as sigma -> 0
        # at that law (as least squares on exact data, zero standard errors).
        return start, np.zeros((len(start), len(start)))
    theta = np.append(start, np.log(max(spread, 1e-3)))  # (beta, log sigma)
    result = optimize.minimize(
        _censored_negative_log_likelihood,
        theta,
        args=(design, log_y, censored),
        jac=True,
        method="BFGS",
        options={"gtol": 1e-8, "maxiter": 10_000},
    )
    # BFGS may stop on "precision loss" at the optimum; only a large gradient is a failure.
    if not result.success and np.abs(result.jac).max() > 1e-4:
        raise RuntimeError(f"the censored power-law fit did not converge: {result.message}")
    hessian = _numerical_hessian(
        lambda point: _censored_negative_log_likelihood(point, design, log_y, censored)[1],
        result.x,
    )
    covariance = np.linalg.inv(hessian)
    p = design.shape[1]
    return result.x[:p], covariance[:p, :p]


def _censored_negative_log_likelihood(
    theta: np.ndarray, design: np.ndarray, log_y: np.ndarray, censored: np.ndarray
) -> tuple[float, np.ndarray]:
    """Negative log-likelihood of the censored normal model and its gradient in
    ``theta = (beta, log sigma)``."""
    from scipy import stats

    beta, log_sigma = theta[:-1], theta[-1]
    sigma = math.exp(log_sigma)
    z = (log_y - design @ beta) / sigma
    observed = ~censored
    zo, zc = z[observed], z[censored]
    log_likelihood = np.sum(stats.norm.logpdf(zo) - log_sigma) + np.sum(stats.norm.logsf(zc))
    hazard = np.exp(stats.norm.logpdf(zc) - stats.norm.logsf(zc))  # d(-log sf)/dz
    gradient_beta = design[observed].T @ zo / sigma + design[censored].T @ hazard / sigma
    gradient_log_sigma = np.sum(zo**2 - 1) + np.sum(hazard * zc)
    return -float(log_likelihood), -np.append(gradient_beta, gradient_log_sigma)


def _numerical_hessian(gradient: Any, point: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """Symmetrised central differences of ``gradient`` at ``point``."""
    columns = []
    for index in range(len(point)):
        delta = np.zeros_like(point)
        delta[index] = step
        columns.append((gradient(point + delta) - gradient(point - delta)) / (2 * step))
    hessian = np.stack(columns, axis=1)
    return (hessian + hessian.T) / 2


def compare_exponents(fit: PowerLawFit, paper: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per exponent of ``paper`` (``{name: exponent}``; every name must be fitted):
    ``{name, ours, ci_low, ci_high, paper, difference (ours - paper), within_ci}``."""
    unknown = [name for name in paper if name not in fit.exponents]
    if unknown:
        raise ValueError(f"exponents {unknown} are not in the fit (fitted: {list(fit.names)})")
    rows = []
    for name, reference in paper.items():
        low, high = fit.intervals[name]
        ours = fit.exponents[name]
        rows.append(
            {
                "name": name,
                "ours": ours,
                "ci_low": low,
                "ci_high": high,
                "paper": float(reference),
                "difference": ours - float(reference),
                "within_ci": bool(low <= reference <= high),
            }
        )
    return rows
