"""The analysis of the ``emergence`` experiment (Zucchet et al., "The emergence of sparse attention",
arXiv 2505.17863) and the pieces the toy-model and recall analyses share: emergence times of runs,
their censored power-law fit, the speed-up of cross-sample repetition, the paper-versus-ours rows,
the loss and fit figures.

A run's row (``results["runs"]``): ``config_hash``, ``seed``, the covariates ``T`` (seq_len), ``d``,
``B`` (burstiness) and ``p`` (cross_sample_p, 0 when the config has none), ``emergence_time`` (None:
not emerged), ``finished`` and ``last_step``. The fit of record is over the runs without
cross-sample repetition (p = 0); runs with p > 0 give the speed-ups of cross-sample repetition
against the same (T, d, B, seed) at p = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from workbench.analysis import PowerLawFit, compare_exponents, emergence_time, fit_power_law
from workbench.experiments.base import AnalysisOutput, Headline, RunRecord, analysis
from workbench.experiments.base import analysis_options as read_options
from workbench.experiments.curves import curve_figure, present_figures
from workbench.experiments.reproduction import (
    exponent_rows,
    ratio_row,
    reproduction_headline,
    value_row,
)
from workbench.experiments.spec import ExperimentSpec, get_path
from workbench.runs import metric_series
from workbench.viz.experiments import (
    Level,
    Mark,
    exponents_by_range_figure,
    power_law_figure,
    relevant_mass_figure,
)
from workbench.viz.style import Style, sweep_styles

EMERGENCE_COVARIATES = {"T": "task.seq_len", "d": "task.d", "B": "task.burstiness"}
"""Covariate name -> config path of the emergence fit."""
CROSS_SAMPLE_PATH = "task.cross_sample_p"

PAPER_LAWS = {
    "toy_model": (1.51, {"T": 0.99, "B": -0.99, "d": 0.49}),
    "transformer": (0.76, {"d": 1.29, "T": 0.80, "B": -0.80}),
}
"""Zucchet et al.'s fitted emergence times ``T_plateau = c prod x^a`` (arXiv 2505.17863):
``1.51 T^0.99 B^-0.99 d^0.49`` (toy model, R^2 0.999) and ``0.76 d^1.29 T^0.80 B^-0.80``
(transformer)."""
PAPER_EXPONENTS = {name: exponents for name, (_, exponents) in PAPER_LAWS.items()}
"""The exponents of `PAPER_LAWS`."""

DEFAULT_OPTIONS = {
    "paper": "transformer",
    "loss_key": "eval_loss",
    "fraction": 0.2,
    "initial_loss": None,
    "smoothing": 5,
    "persist": 3,
}


def emergence_options(spec: ExperimentSpec, extra: Mapping[str, Any] | None = None) -> dict:
    """The analysis options (`DEFAULT_OPTIONS`, plus ``extra``) with ``paper`` checked."""
    options = read_options(spec, {**DEFAULT_OPTIONS, **(extra or {})})
    if options["paper"] not in PAPER_LAWS:
        raise ValueError(f"paper must be one of {sorted(PAPER_LAWS)}, got {options['paper']!r}")
    return options


@analysis("emergence")
def emergence_analysis(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """Emergence time of every run (`emergence_time` of ``loss_key``), a power-law fit against
    the covariates that vary (of T = seq_len, d, B = burstiness) over the runs without
    cross-sample repetition, with 95% intervals, the comparison with the paper's exponents
    (``paper``: ``"transformer"`` or ``"toy_model"``) and our times over the paper's law, and the
    speed-up of each cross-sample probability p. ``initial_loss``: the reference of the 0.2 x
    threshold (None: each run's loss at step 0; the paper's reference is the zero predictor's
    loss 0.5). Figures: loss curves, relevant-mass curves (with the ``attention`` metric), fit."""
    options = emergence_options(spec)
    rows = [emergence_row(run, options) for run in runs]
    results = emergence_results(rows, options["paper"])
    styles = emergence_styles(rows)

    def group(run: RunRecord) -> str:
        return emergence_label(row_covariates(run.config))

    def style(run: RunRecord) -> Style:
        return styles[run.config_hash]

    figures = present_figures(
        loss=emergence_loss_figure(runs, rows, options, group, style),
        relevant_mass=relevant_mass_figure(
            {run.config_hash: run.metrics() for run in runs},
            {run.config_hash: group(run) for run in runs},
            styles={run.config_hash: style(run) for run in runs},
        ),
        fit=emergence_fit_figure(rows, results.get("fit"), paper_name=options["paper"]),
        exponents_by_length=exponents_by_length_figure(rows, results, options["paper"]),
    )
    headline = emergence_headline(results, options["paper"])
    return AnalysisOutput(results=results, figures=figures, headline=headline)


def emergence_results(rows: list[dict[str, Any]], paper: str) -> dict[str, Any]:
    """``runs``, the fit over the runs at p = 0 (`fit_times`), ``cross_sample`` speed-ups and
    ``paper_vs_ours`` rows."""
    baseline = [row for row in rows if not row["p"]]
    results: dict[str, Any] = {"runs": rows, **fit_times(baseline, list(EMERGENCE_COVARIATES))}
    results["n_runs"] = len(rows)
    if results.get("fit") is not None:
        fit = PowerLawFit.from_dict(results["fit"])
        exponents = {name: a for name, a in PAPER_EXPONENTS[paper].items() if name in fit.names}
        results["comparison"] = compare_exponents(fit, exponents)
    results["fits_from_length"] = fits_from_length(baseline)
    results["cross_sample"] = cross_sample_speedups(rows)
    results["paper_vs_ours"] = emergence_reproduction(results, paper)
    return results


def exponents_by_length_figure(
    rows: list[dict[str, Any]], results: Mapping[str, Any], paper: str
) -> Any:
    """The exponents of the fit over all lengths and of `fits_from_length` against the shortest
    length kept, beside the paper's (None when there is nothing to compare: fewer than three
    lengths, or no fit)."""
    if not results.get("fits_from_length") or results.get("fit") is None:
        return None
    shortest = min(row["T"] for row in rows if not row.get("p"))
    fits = [(shortest, results["fit"])]
    fits += [(entry["min_T"], entry["fit"]) for entry in results["fits_from_length"]]
    return exponents_by_range_figure(fits, PAPER_EXPONENTS[paper], paper_name=paper)


def fits_from_length(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each sequence length ``t`` of the rows but the shortest and the longest: the fit
    (`fit_times`) over the rows with ``T >= t``, ``{"min_T", "n_fitted", "fit"}``. How the
    exponents move as the short sequences are left out shows whether one power law holds over
    the whole range (a floor under the short sequences' times flattens a single fit)."""
    lengths = sorted({row["T"] for row in rows})
    fits = []
    for shortest in lengths[1:-1]:
        subset = [row for row in rows if row["T"] >= shortest]
        try:
            summary = fit_times(subset, list(EMERGENCE_COVARIATES))
        except RuntimeError as error:  # a censored fit of few runs that does not converge
            summary = {"n_fitted": len(subset), "fit": None, "fit_error": str(error)}
        entry = {"min_T": shortest, "n_fitted": summary["n_fitted"], "fit": summary["fit"]}
        if "fit_error" in summary:
            entry["fit_error"] = summary["fit_error"]
        fits.append(entry)
    return fits


def row_covariates(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{T, d, B, p}`` of a single-location run config (p 0 when it has none)."""
    covariates = {name: get_path(config, path) for name, path in EMERGENCE_COVARIATES.items()}
    try:
        covariates["p"] = float(get_path(config, CROSS_SAMPLE_PATH))
    except KeyError:
        covariates["p"] = 0.0
    return covariates


def emergence_label(covariates: Mapping[str, Any]) -> str:
    """``"T=64 d=16 B=1"``, with `` p=0.5`` where there is cross-sample repetition."""
    label = " ".join(f"{name}={covariates[name]}" for name in EMERGENCE_COVARIATES)
    return label + (f" p={covariates['p']:g}" if covariates.get("p") else "")


def emergence_row(run: RunRecord, options: Mapping[str, Any]) -> dict[str, Any]:
    """The run's covariates, emergence time (None: not emerged) and last logged step."""
    steps, losses = metric_series(run.metrics(), options["loss_key"])
    time = (
        emergence_time(
            steps,
            losses,
            initial=options["initial_loss"],
            fraction=options["fraction"],
            smoothing=options["smoothing"],
            persist=options["persist"],
        )
        if steps.size
        else None
    )
    return {
        "config_hash": run.config_hash,
        "seed": run.config.get("seed"),
        **row_covariates(run.config),
        "emergence_time": time,
        # An unfinished run without an emergence time: not emerged by `last_step` (censored).
        "finished": run.finished,
        "last_step": int(steps[-1]) if steps.size else None,
    }


def fit_times(rows: list[dict[str, Any]], covariates: Sequence[str]) -> dict[str, Any]:
    """Power-law fit of the rows' ``emergence_time`` on those of ``covariates`` that vary among
    the runs that emerged. A run without an emergence time is censored at its last logged step
    (it emerged later, if ever): with such runs the fit is the censored maximum-likelihood one,
    and ``fit_emerged_only`` (least squares over the emerged runs alone) is given beside it."""
    emerged = [row for row in rows if row["emergence_time"]]
    points, times, censored = fit_points(rows)
    varying = [name for name in covariates if len({row[name] for row in emerged}) > 1]
    summary: dict[str, Any] = {
        "n_emerged": len(emerged),
        "n_censored": int(censored.sum()),
        "n_fitted": len(rows),
        "fit": None,
    }
    if not varying:
        summary["fit_error"] = "no covariate varies among the runs that emerged"
        return summary
    try:
        fit = fit_power_law(
            {name: [row[name] for row in points] for name in varying}, times, censored=censored
        )
        if censored.any():
            summary["fit_emerged_only"] = fit_power_law(
                {name: [row[name] for row in emerged] for name in varying},
                [row["emergence_time"] for row in emerged],
            ).to_dict()
    except ValueError as error:
        summary["fit_error"] = str(error)
        return summary
    summary["fit"] = fit.to_dict()
    return summary


def fit_points(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[float], np.ndarray]:
    """The rows that enter a fit, their times and which are censored ``[n]`` bool: an emerged run
    at its emergence time, a run without one at its last logged step (it emerged later, if
    ever)."""
    points = [row for row in rows if row["emergence_time"] or row.get("last_step")]
    times = [row["emergence_time"] or row["last_step"] for row in points]
    return points, times, np.array([not row["emergence_time"] for row in points], dtype=bool)


def cross_sample_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cross-sample probability p > 0: the emergence-time ratios ``t(p = 0) / t(p)`` of the
    runs that share (T, d, B, seed) and both emerged, and the toy model's theory factor
    ``sqrt(p^2 d + (1 - p)^2)`` (Zucchet et al.: the plateau scales as ``sqrt(d) T /
    sqrt(p^2 d + (1 - p)^2)``) at the same points."""

    def key(row: Mapping[str, Any]) -> tuple[Any, ...]:
        return (row["T"], row["d"], row["B"], row["seed"])

    baseline = {key(row): row["emergence_time"] for row in rows if not row["p"]}
    entries = []
    for p in sorted({row["p"] for row in rows if row["p"]}):
        ratios, theory = [], []
        for row in rows:
            before = baseline.get(key(row))
            if row["p"] == p and before and row["emergence_time"]:
                ratios.append(before / row["emergence_time"])
                theory.append(math.sqrt(p * p * row["d"] + (1 - p) ** 2))
        entries.append({"p": p, "ratios": ratios, "theory": theory})
    return entries


def law_ratios(rows: list[dict[str, Any]], paper: str) -> list[float]:
    """Our emergence time over the paper's fitted law at each emerged run without cross-sample
    repetition."""
    prefactor, exponents = PAPER_LAWS[paper]
    ratios = []
    for row in rows:
        if row["emergence_time"] and not row["p"]:
            law = prefactor * math.prod(row[name] ** a for name, a in exponents.items())
            ratios.append(row["emergence_time"] / law)
    return ratios


def emergence_reproduction(results: Mapping[str, Any], paper: str) -> list[dict[str, Any]]:
    """The paper-versus-ours rows: the fitted exponents, our times over the paper's law (1 when
    they agree), and the cross-sample speed-ups (no paper number for the transformer: the toy
    model's theory factor in the note)."""
    fit = None if results.get("fit") is None else PowerLawFit.from_dict(results["fit"])
    prefactor, exponents = PAPER_LAWS[paper]
    law = " ".join([f"{prefactor:g}", *(f"{n}^{a:g}" for n, a in exponents.items())])
    rows = exponent_rows(fit, exponents, paper)
    longest = results.get("fits_from_length", [])[-1:]
    if longest and longest[0]["fit"] is not None and "T" in longest[0]["fit"]["exponents"]:
        tail = PowerLawFit.from_dict(longest[0]["fit"])
        low, high = tail.intervals["T"]
        quantity = f"{paper}: exponent of T over T >= {longest[0]['min_T']:g}"
        note = f"the {longest[0]['n_fitted']} runs at the two longest lengths, p = 0"
        rows.append(value_row(quantity, exponents["T"], tail.exponents["T"], low, high, note))
    rows.append(
        ratio_row(
            f"{paper}: emergence time / the paper's law {law}",
            1.0,
            law_ratios(results["runs"], paper),
            "geometric mean over the emerged runs at p = 0",
        )
    )
    for entry in results["cross_sample"]:
        theory = float(np.mean(entry["theory"])) if entry["theory"] else None
        note = "" if theory is None else f"toy-model theory {theory:.3g}"
        paper_value = theory if paper == "toy_model" else None
        quantity = f"{paper}: speed-up of cross-sample repetition p={entry['p']:g}"
        rows.append(ratio_row(quantity, paper_value, entry["ratios"], note))
    return rows


def emergence_headline(results: Mapping[str, Any], paper: str) -> Headline:
    """The paper-versus-ours rows, titled with the fitted law."""
    fit = results.get("fit")
    counts = f"{results['n_emerged']} of {results['n_fitted']} runs at p = 0 emerged"
    censored = f", {results['n_censored']} censored" if results["n_censored"] else ""
    if fit is None:
        title = f"emergence time: no fit ({results.get('fit_error', 'no fit')})"
        return reproduction_headline(title, results["paper_vs_ours"], counts)
    return reproduction_headline(
        f"emergence time = {fit['formula']} (95% intervals; paper: Zucchet et al., {paper} fit)",
        results["paper_vs_ours"],
        f"{counts}{censored}; R^2 {fit['r2']:.3f}",
    )


def emergence_styles(rows: list[dict[str, Any]]) -> dict[str, Style]:
    """``{config_hash: Style}`` of the emergence runs (``results["runs"]`` rows), the same in the
    loss, relevant-mass and fit figures: one hue per combination of d, B and p, shaded by T
    (`sweep_styles`)."""
    points = [{name: row.get(name, 0.0) for name in (*EMERGENCE_COVARIATES, "p")} for row in rows]
    styles = sweep_styles(points, "T") if points else []
    return {row["config_hash"]: style for row, style in zip(rows, styles, strict=True)}


def emergence_threshold(
    steps: np.ndarray, losses: np.ndarray, options: Mapping[str, Any]
) -> float | None:
    """The loss a run must reach to have emerged: ``fraction x`` the ``initial_loss`` option, or
    x the run's first finite logged loss (as `emergence_time`)."""
    initial = options["initial_loss"]
    if initial is None:
        finite = losses[np.isfinite(losses)]
        if not finite.size:
            return None
        initial = float(finite[0])
    return options["fraction"] * initial


def emergence_loss_figure(
    runs: list[RunRecord],
    rows: list[dict[str, Any]],
    options: Mapping[str, Any],
    group: Callable[[RunRecord], str],
    style: Callable[[RunRecord], Style],
    *,
    title: str = "test loss (colour: d, B and p, darker for longer T)",
) -> Any | None:
    """Test-loss curves with the emergence threshold (one dashed line where every run shares it,
    else each run's dotted in its colour), a dot where each run emerged and an open triangle at
    the last step of the runs that had not (censored)."""
    key = options["loss_key"]
    row_of = {row["config_hash"]: row for row in rows}
    thresholds, marks = {}, []
    for run in runs:
        steps, losses = metric_series(run.metrics(), key)
        if not steps.size:
            continue
        threshold = emergence_threshold(steps, losses, options)
        thresholds[run.config_hash] = threshold
        time = row_of[run.config_hash]["emergence_time"]
        if time is not None and threshold is not None:
            text = f"{group(run)}: emerged at step {time:.0f}"
            marks.append(Mark(run.config_hash, time, threshold, text, "emergence time"))
        elif time is None:
            text = f"{group(run)}: not emerged by step {steps[-1]:.0f}"
            marks.append(
                Mark(run.config_hash, steps[-1], losses[-1], text, "not emerged yet", bound=True)
            )
    fraction = f"{options['fraction']:g} x"
    values = {value for value in thresholds.values() if value is not None}
    if len(values) == 1:
        value = values.pop()
        initial = options["initial_loss"]
        reference = f"{initial:g}" if initial is not None else "the initial loss"
        levels = [Level(value, f"threshold {fraction} {reference} = {value:.3g}")]
    else:
        levels = [
            Level(value, f"threshold: {fraction} each run's initial loss", curve=label)
            for label, value in thresholds.items()
            if value is not None
        ]
    return curve_figure(
        runs, key, group, style, title=title, log_y=True, levels=levels, marks=marks
    )


def emergence_fit_figure(
    rows: list[dict[str, Any]],
    fit: Mapping[str, Any] | None,
    *,
    paper: Mapping[str, float] | None = None,
    paper_name: str = "transformer",
) -> Any | None:
    """`power_law_figure` of an emergence analysis' ``results["runs"]`` rows (those at p = 0)
    and ``results["fit"]`` (None without a fit): emerged runs, censored runs as lower bounds, the
    fit with its confidence band (fits that record their covariance) and the paper's exponent
    of the x covariate (``paper``, default Zucchet et al.'s ``paper_name`` fit) as a dashed
    slope."""
    if fit is None:
        return None
    law = PowerLawFit.from_dict(fit)
    points, times, censored = fit_points([row for row in rows if not row.get("p")])
    covariates = {name: [row[name] for row in points] for name in law.names}
    x_name = "T" if "T" in covariates else law.names[0]
    paper = PAPER_EXPONENTS[paper_name] if paper is None else paper
    styles = emergence_styles(rows)
    return power_law_figure(
        covariates,
        times,
        law.predict(covariates).tolist(),
        formula=formula_with_intervals(law),
        x_name=x_name,
        censored=censored.tolist(),
        interval=None if law.covariance is None else law.predict_interval,
        confidence=law.confidence,
        reference_exponent=paper.get(x_name),
        reference_name=f"paper ({paper_name})",
        styles=[styles[row["config_hash"]] for row in points],
    )


def formula_with_intervals(fit: PowerLawFit) -> str:
    """E.g. ``"0.03 T^0.61 [0.31, 0.91] B^-0.50 [-0.99, -0.01]"``."""
    terms = [
        f"{name}^{fit.exponents[name]:.2f} [{fit.intervals[name][0]:.2f}, "
        f"{fit.intervals[name][1]:.2f}]"
        for name in fit.names
    ]
    return " ".join([f"{fit.prefactor:.3g}", *terms])
