import numpy as np
import pytest

from workbench.analysis import (
    PowerLawFit,
    compare_exponents,
    emergence_time,
    fit_power_law,
    running_median,
    starts_past,
    threshold_time,
)

STEPS = np.arange(0, 2000, 10)


def sigmoid_drop(drop: float, width: float = 40.0, start: float = 1.0, end: float = 0.02):
    """A loss falling from ``start`` to ``end`` with its 0.2 x start crossing at ``drop``."""
    # start - (start - end) * sigmoid((t - centre) / width) equals 0.2 start at t = drop
    level = (start - 0.2 * start) / (start - end)
    centre = drop - width * np.log(level / (1 - level))
    return start - (start - end) / (1 + np.exp(-(STEPS - centre) / width))


@pytest.mark.parametrize("drop", [300.0, 777.0, 1500.0])
def test_emergence_time_recovers_the_drop_under_noise(drop):
    rng = np.random.default_rng(0)
    losses = sigmoid_drop(drop) * np.exp(0.05 * rng.standard_normal(STEPS.size))
    losses[0] = 1.0  # the initial loss is the reference
    found = emergence_time(STEPS, losses)
    assert found == pytest.approx(drop, abs=25)


def test_emergence_time_noiseless_interpolates_exactly_between_logged_steps():
    losses = sigmoid_drop(777.0)
    assert emergence_time(STEPS, losses, smoothing=1, persist=1) == pytest.approx(777.0, abs=0.5)


def test_emergence_time_is_none_when_never_reached():
    losses = np.linspace(1.0, 0.5, STEPS.size)
    assert emergence_time(STEPS, losses) is None


def test_emergence_time_ignores_a_single_noisy_dip():
    losses = sigmoid_drop(1500.0)
    losses[30] = 0.01  # one spurious dip at step 300
    assert emergence_time(STEPS, losses) == pytest.approx(1500.0, abs=5)
    assert emergence_time(STEPS, losses, smoothing=1, persist=1) == pytest.approx(300, abs=10)


def test_emergence_time_uses_the_given_initial_and_fraction():
    losses = sigmoid_drop(777.0)
    later = emergence_time(STEPS, losses, initial=0.5)  # target 0.1: later than 0.2
    assert later > 777.0
    assert emergence_time(STEPS, losses, fraction=0.5) < 777.0


def test_threshold_time_above_for_accuracy():
    accuracy = np.clip((STEPS - 500) / 1000, 0, 1)
    assert threshold_time(STEPS, accuracy, 0.05, smoothing=1, persist=1) == pytest.approx(550)
    assert threshold_time(STEPS, accuracy, 0.05) == pytest.approx(550)
    assert threshold_time(STEPS, accuracy * 0.01, 0.05) is None


def test_threshold_time_ignores_nan_and_validates():
    values = np.array([0.0, np.nan, 0.5, 1.0])
    assert threshold_time([0, 1, 2, 3], values, 0.25, smoothing=1, persist=1) == 1.0
    with pytest.raises(ValueError, match="increasing"):
        threshold_time([0, 2, 1], [0, 1, 1], 0.5)
    with pytest.raises(ValueError, match="direction"):
        threshold_time([0, 1], [0, 1], 0.5, direction="up")
    with pytest.raises(ValueError, match="odd"):
        running_median([1.0, 2.0], 2)


def test_starts_past_a_threshold_below_chance():
    # A 16-way task: chance accuracy 1/16 > 5% at step 0, then learning.
    rng = np.random.default_rng(0)
    accuracy = np.clip(1 / 16 + 0.01 * rng.standard_normal(STEPS.size) + (STEPS - 500) / 1e3, 0, 1)
    accuracy[:50] = 1 / 16 + 0.005 * rng.standard_normal(50)
    assert starts_past(STEPS, accuracy, 0.05)
    assert not starts_past(STEPS, accuracy, 0.5)
    assert threshold_time(STEPS, accuracy, 0.05) == STEPS[0]  # what "at chance" replaces
    # One lucky first evaluation is not a start past the threshold (same running median).
    rising = np.clip((STEPS - 500) / 1000, 0, 1)
    rising[0] = 0.2
    assert not starts_past(STEPS, rising, 0.05)
    assert starts_past(STEPS, 1 - rising, 0.9, "below") is False
    assert starts_past(STEPS, rising, 0.0, "below")
    assert not starts_past([0.0, 1.0], [np.nan, np.nan], 0.5)
    with pytest.raises(ValueError, match="direction"):
        starts_past([0, 1], [0, 1], 0.5, direction="up")


def power_law_data(noise: float, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = {"T": rng.choice([16, 32, 64, 128, 256], n), "B": rng.choice([1, 2, 4, 8], n)}
    y = 1.5 * x["T"] ** 0.8 * x["B"] ** -0.8 * np.exp(noise * rng.standard_normal(n))
    return x, y


def test_power_law_fit_noiseless_matches_lstsq_on_log_data():
    x, y = power_law_data(noise=0.0)
    fit = fit_power_law(x, y)
    design = np.column_stack([np.ones(len(y)), np.log(x["T"]), np.log(x["B"])])
    expected, *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
    assert fit.log_prefactor == pytest.approx(expected[0], abs=1e-12)
    assert fit.exponents["T"] == pytest.approx(expected[1], abs=1e-12)
    assert fit.exponents["B"] == pytest.approx(expected[2], abs=1e-12)
    assert fit.prefactor == pytest.approx(1.5)
    assert fit.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(fit.predict(x), y, rtol=1e-10)


def test_power_law_fit_intervals_cover_the_truth_under_noise():
    x, y = power_law_data(noise=0.1)
    fit = fit_power_law(x, y)
    for name in ("T", "B"):
        low, high = fit.intervals[name]
        assert low < 0.8 * (1 if name == "T" else -1) < high
        assert high - low < 0.2
    assert fit.dof == 57
    assert 0.9 < fit.r2 < 1
    assert fit.formula().startswith(f"{fit.prefactor:.2f} T^")


def test_power_law_fit_coverage_is_near_nominal():
    covered = 0
    for seed in range(200):
        x, y = power_law_data(noise=0.3, n=12, seed=seed)
        low, high = fit_power_law(x, y).intervals["T"]
        covered += low <= 0.8 <= high
    assert 0.9 <= covered / 200 <= 0.99


def test_power_law_fit_single_covariate():
    t = np.array([8.0, 16, 32, 64])
    fit = fit_power_law({"T": t}, 2 * t**0.5)
    assert fit.exponents == {"T": pytest.approx(0.5)}
    assert fit.predict({"T": [100.0]}) == pytest.approx([20.0])


def test_power_law_fit_errors():
    with pytest.raises(ValueError, match="> 0"):
        fit_power_law({"T": [1, 2, 0]}, [1, 2, 3])
    with pytest.raises(ValueError, match="> 0"):
        fit_power_law({"T": [1, 2, 3]}, [1, -2, 3])
    with pytest.raises(ValueError, match="too few points"):
        fit_power_law({"T": [1, 2]}, [1, 2])
    with pytest.raises(ValueError, match="collinear"):
        fit_power_law({"T": [2, 2, 2, 2]}, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="length"):
        fit_power_law({"T": [1, 2, 3], "B": [1, 2]}, [1, 2, 3])
    with pytest.raises(ValueError, match="at least one"):
        fit_power_law({}, [1, 2, 3])


def test_compare_exponents_rows():
    x, y = power_law_data(noise=0.1)
    fit = fit_power_law(x, y)
    rows = compare_exponents(fit, {"T": 0.8, "B": 0.0})
    assert [row["name"] for row in rows] == ["T", "B"]
    assert rows[0]["within_ci"] and not rows[1]["within_ci"]
    assert rows[1]["difference"] == pytest.approx(fit.exponents["B"])
    with pytest.raises(ValueError, match="not in the fit"):
        compare_exponents(fit, {"d": 0.5})


def censor(y: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """Times stopped at a budget: ``(min(y, budget), y > budget)``."""
    budget = np.quantile(y, quantile)
    return np.minimum(y, budget), y > budget


def test_censored_fit_corrects_the_bias_of_dropping_unfinished_runs():
    mle, dropped = [], []
    for seed in range(100):
        x, y = power_law_data(noise=0.4, n=40, seed=seed)
        stopped, censored = censor(y, 0.6)
        fit = fit_power_law(x, stopped, censored=censored)
        assert fit.n_censored == censored.sum() and fit.n_points == 40
        mle.append(fit.exponents["T"])
        kept = {name: values[~censored] for name, values in x.items()}
        dropped.append(fit_power_law(kept, y[~censored]).exponents["T"])
    assert abs(np.mean(mle) - 0.8) < 0.03
    assert np.mean(dropped) < 0.75  # the runs that emerged late are the ones left out


def test_censored_fit_intervals_cover_the_truth():
    covered = 0
    for seed in range(200):
        x, y = power_law_data(noise=0.3, n=30, seed=seed)
        stopped, censored = censor(y, 0.7)
        low, high = fit_power_law(x, stopped, censored=censored).intervals["T"]
        covered += low <= 0.8 <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_an_uninformative_censored_point_leaves_the_least_squares_fit():
    x, y = power_law_data(noise=0.2, n=25)
    reference = fit_power_law(x, y)
    # A run censored at a bound far below every prediction says nothing about the exponents.
    more_x = {name: np.append(values, values[0]) for name, values in x.items()}
    fit = fit_power_law(more_x, np.append(y, 1e-9), censored=np.arange(26) == 25)
    for name in ("T", "B"):
        assert fit.exponents[name] == pytest.approx(reference.exponents[name], abs=1e-6)
    # Maximum likelihood: covariance sigma_ml^2 (X^T X)^-1 with sigma_ml^2 = RSS / n.
    design = np.column_stack([np.ones(25), np.log(x["T"]), np.log(x["B"])])
    residuals = np.log(y) - design @ np.array(
        [reference.log_prefactor, reference.exponents["T"], reference.exponents["B"]]
    )
    covariance = residuals @ residuals / 25 * np.linalg.inv(design.T @ design)
    assert fit.standard_errors["T"] == pytest.approx(np.sqrt(covariance[1, 1]), rel=1e-3)
    assert fit.r2 == pytest.approx(reference.r2)


def test_censored_fit_errors():
    x, y = power_law_data(noise=0.1, n=6)
    with pytest.raises(ValueError, match="censored must be a bool array"):
        fit_power_law(x, y, censored=[0, 1, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="censored must be a bool array"):
        fit_power_law(x, y, censored=np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match="3 uncensored"):
        fit_power_law(x, y, censored=np.arange(6) < 3)


def test_censored_fit_of_an_exact_law_is_that_law():
    x, y = power_law_data(noise=0.0, n=30)
    stopped, censored = censor(y, 0.6)
    fit = fit_power_law(x, stopped, censored=censored)
    assert fit.exponents == {"T": pytest.approx(0.8), "B": pytest.approx(-0.8)}
    assert fit.standard_errors["T"] == 0.0


@pytest.mark.parametrize("censor_some", [False, True])
def test_power_law_predict_interval_brackets_the_fit_and_survives_to_dict(censor_some):
    x, y = power_law_data(noise=0.2, n=40)
    stopped, censored = censor(y, 0.8) if censor_some else (y, None)
    fit = fit_power_law(x, stopped, censored=censored)
    grid = {"T": np.array([16.0, 50.0, 256.0]), "B": np.array([1.0, 2.0, 8.0])}
    low, high = fit.predict_interval(grid)
    assert np.all(low < fit.predict(grid)) and np.all(fit.predict(grid) < high)
    # At T = B = 1 only the prefactor is left: the band is its interval.
    low, high = fit.predict_interval({"T": [1.0], "B": [1.0]})
    np.testing.assert_allclose(np.log([low[0], high[0]]), fit.intervals["log_prefactor"])
    again = PowerLawFit.from_dict(fit.to_dict())
    assert again == fit
    np.testing.assert_allclose(again.predict_interval(grid), fit.predict_interval(grid))
    older = {key: value for key, value in fit.to_dict().items() if key != "covariance"}
    with pytest.raises(ValueError, match="no covariance"):
        PowerLawFit.from_dict(older).predict_interval(grid)


def test_power_law_predict_interval_coverage_is_near_nominal():
    point = {"T": [50.0], "B": [3.0]}
    truth = 1.5 * 50**0.8 * 3**-0.8
    covered = 0
    for seed in range(200):
        x, y = power_law_data(noise=0.3, n=12, seed=seed)
        low, high = fit_power_law(x, y).predict_interval(point)
        covered += low[0] <= truth <= high[0]
    assert 0.9 <= covered / 200 <= 0.99
