"""The analysis of the ``emergence_toy`` experiment: the emergence paper's toy model
(`workbench.emergence_toy`) trained by SGD, its emergence times and their fit beside the paper's
``1.51 T^0.99 B^-0.99 d^0.49``, the cross-sample fit beside its exponent 1.02, and the theory: the
gradient flow of the expected loss (`workbench.emergence_toy.theory.gradient_flow`) drawn beside
each simulation, and the leading-order plateau.

Rows are `workbench.experiments.emergence_analysis` rows plus ``repeat_logits`` (``"free"`` or
``"shared"``), ``lr``, ``theory_time`` (the emergence time of the gradient flow at the run's
learning rate) and ``estimate`` (`plateau_estimate` / lr).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from workbench.analysis import PowerLawFit, emergence_time, fit_power_law
from workbench.experiments.base import AnalysisOutput, RunRecord, analysis
from workbench.experiments.emergence_analysis import (
    PAPER_LAWS,
    emergence_fit_figure,
    emergence_label,
    emergence_options,
    emergence_row,
    emergence_styles,
    emergence_threshold,
    fit_points,
    fit_times,
    law_ratios,
)
from workbench.experiments.reproduction import (
    exponent_rows,
    ratio_row,
    reproduction_headline,
    value_row,
)
from workbench.experiments.spec import ExperimentSpec
from workbench.runs import metric_series
from workbench.viz.experiments import Level, curves_figure, power_law_figure

PAPER_CROSS_SAMPLE_EXPONENT = 1.02
"""Zucchet et al.: the toy model's plateau ~ ``(sqrt(d) T / sqrt(p^2 d + (1 - p)^2))^1.02``."""


@analysis("emergence_toy")
def emergence_toy_analysis(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """Per ``repeat_logits``: the fit of the emergence times over the runs without cross-sample
    repetition (T, d, B) beside the paper's toy-model law; over the runs with B = 1: the fit
    against ``sqrt(d) T / sqrt(p^2 d + (1 - p)^2)`` beside its exponent 1.02; simulation over
    gradient flow. Figures: test loss with the gradient-flow curves, fits, simulation against
    gradient flow."""
    options = emergence_options(spec, {"paper": "toy_model"})
    rows, flows, computed = [], {}, {}
    for run in runs:
        row = toy_row(run, options)
        rows.append(row)
        settings = {name: value for name, value in run.config.items() if name != "seed"}
        key = json.dumps([settings, row["last_step"]], sort_keys=True)  # seeds share a flow
        if key not in computed:
            computed[key] = theory_curve(run, options)
        flows[run.config_hash] = computed[key]
        row["theory_time"] = theory_time(*flows[run.config_hash], options)
    results: dict[str, Any] = {"runs": rows, "n_runs": len(rows), "fits": {}}
    for repeat in sorted({row["repeat_logits"] for row in rows}):
        # B = 1: free and shared logits are one model, in both fits
        chosen = [r for r in rows if (r["repeat_logits"] == repeat or r["B"] == 1) and not r["p"]]
        results["fits"][repeat] = fit_times(chosen, ["T", "d", "B"])
    results["cross_sample_fit"] = cross_sample_fit(rows)
    results["paper_vs_ours"] = toy_reproduction(results)
    figures = toy_figures(runs, rows, flows, results, options)
    emerged = sum(bool(row["emergence_time"]) for row in rows)
    headline = reproduction_headline(
        "emergence toy model: fits and theory beside Zucchet et al.'s (95% intervals)",
        results["paper_vs_ours"],
        f"{emerged} of {len(rows)} runs emerged",
    )
    return AnalysisOutput(results=results, figures=figures, headline=headline)


def toy_row(run: RunRecord, options: Mapping[str, Any]) -> dict[str, Any]:
    """`emergence_row` plus ``repeat_logits``, ``lr`` and the leading-order ``estimate``."""
    from workbench.emergence_toy.theory import plateau_estimate

    row = emergence_row(run, options)
    row["repeat_logits"] = (run.config.get("model") or {}).get("repeat_logits", "free")
    row["lr"] = float(run.config.get("lr", 1.0))
    estimate = plateau_estimate(row["T"], row["d"], row["B"], row["repeat_logits"])
    row["estimate"] = estimate / row["lr"]
    return row


def theory_curve(run: RunRecord, options: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps [m], test losses [m])`` of gradient flow on the expected loss for the run's task,
    model and learning rate, logged as often as the run evaluated, until half the emergence
    threshold or the run's last step."""
    from workbench.emergence_toy.theory import gradient_flow
    from workbench.train import TrainConfig

    config = TrainConfig.from_dict(run.config)
    steps, losses = metric_series(run.metrics(), options["loss_key"])
    threshold = emergence_threshold(steps, losses, options) if steps.size else None
    until = None if threshold is None else threshold / 2
    last = int(steps[-1]) if steps.size else config.steps
    return gradient_flow(
        config.resolved_task(),
        config.model,
        lr=config.lr,
        steps=last,
        every=config.eval_every,
        until=until,
    )


def theory_time(steps: np.ndarray, losses: np.ndarray, options: Mapping[str, Any]) -> float | None:
    """The emergence time of a gradient-flow curve (no smoothing: it has no noise)."""
    initial = options["initial_loss"] if options["initial_loss"] is not None else losses[0]
    return emergence_time(
        steps, losses, initial=initial, fraction=options["fraction"], smoothing=1, persist=1
    )


def cross_sample_variable(row: Mapping[str, Any]) -> float:
    """``sqrt(d) T / sqrt(p^2 d + (1 - p)^2)``: the toy model's theory of cross-sample
    repetition (``sqrt(d) T`` at p = 0)."""
    p, d = row["p"], row["d"]
    return math.sqrt(d) * row["T"] / math.sqrt(p * p * d + (1 - p) ** 2)


def cross_sample_fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the runs with B = 1 (where free and shared logits are one model): the power-law fit
    of the emergence time against `cross_sample_variable` (censored runs as lower bounds)."""
    chosen = [row for row in rows if row["B"] == 1]
    if not any(row["p"] for row in chosen):
        return {"fit": None, "fit_error": "no run with cross-sample repetition and B = 1"}
    points, times, censored = fit_points(chosen)
    try:
        x = [cross_sample_variable(row) for row in points]
        fit = fit_power_law({"X": x}, times, censored=censored)
    except ValueError as error:
        return {"fit": None, "fit_error": str(error)}
    return {"fit": fit.to_dict(), "n_points": len(points)}


def toy_reproduction(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per ``repeat_logits``: exponents and prefactor against the paper's toy-model law, our
    times over that law; the cross-sample exponent; simulation over gradient flow."""
    prefactor, exponents = PAPER_LAWS["toy_model"]
    rows: list[dict[str, Any]] = []
    for repeat, summary in results["fits"].items():
        fit = None if summary["fit"] is None else PowerLawFit.from_dict(summary["fit"])
        complete = fit is not None and set(exponents) <= set(fit.names)
        label = f"toy model ({repeat} repeat logits)"
        rows += exponent_rows(fit, exponents, label, prefactor if complete else None)
        chosen = [r for r in results["runs"] if r["repeat_logits"] == repeat or r["B"] == 1]
        rows.append(
            ratio_row(
                f"{label}: emergence time / the paper's law",
                1.0,
                law_ratios(chosen, "toy_model"),
                "geometric mean over the emerged runs at p = 0",
            )
        )
    cross = results["cross_sample_fit"]
    quantity = "toy model: exponent of sqrt(d) T / sqrt(p^2 d + (1 - p)^2)"
    if cross["fit"] is None:
        rows.append(value_row(quantity, PAPER_CROSS_SAMPLE_EXPONENT, None, note=cross["fit_error"]))
    else:
        fit = PowerLawFit.from_dict(cross["fit"])
        low, high = fit.intervals["X"]
        rows.append(value_row(quantity, PAPER_CROSS_SAMPLE_EXPONENT, fit.exponents["X"], low, high))
    ratios = [
        row["emergence_time"] / row["theory_time"]
        for row in results["runs"]
        if row["emergence_time"] and row["theory_time"]
    ]
    rows.append(
        ratio_row(
            "toy model: SGD emergence time / gradient flow's",
            None,
            ratios,
            "theory: gradient flow on the expected loss (ours)",
        )
    )
    return rows


def toy_figures(
    runs: list[RunRecord],
    rows: list[dict[str, Any]],
    flows: Mapping[str, tuple[np.ndarray, np.ndarray]],
    results: Mapping[str, Any],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """``loss`` (simulations solid, gradient flow dotted, in each run's colour), ``fit_<repeat>``
    per repeat_logits, ``theory`` (simulated against gradient-flow emergence times)."""
    styles = emergence_styles(rows)
    row_of = {row["config_hash"]: row for row in rows}
    curves, groups, group_styles = {}, {}, {}
    for run in runs:
        row, style = row_of[run.config_hash], styles[run.config_hash]
        label = f"{emergence_label(row)} {row['repeat_logits']}"
        curves[run.config_hash] = metric_series(run.metrics(), options["loss_key"])
        groups[run.config_hash] = label
        group_styles[label] = style
        theory = f"gradient flow: {label}"
        curves[f"{run.config_hash} theory"] = flows[run.config_hash]
        groups[f"{run.config_hash} theory"] = theory
        group_styles[theory] = style.replace(dash="dot")
    threshold = options["fraction"] * (options["initial_loss"] or 0.5)
    figures: dict[str, Any] = {}
    if runs:
        figures["loss"] = curves_figure(
            curves,
            title="toy model: test loss, SGD (solid) and gradient flow (dotted)",
            y_title=options["loss_key"],
            log_y=True,
            groups=groups,
            styles=group_styles,
            levels=[Level(threshold, f"threshold {threshold:.3g}")],
        )
    for repeat, summary in results["fits"].items():
        chosen = [row for row in rows if row["repeat_logits"] == repeat or row["B"] == 1]
        figure = emergence_fit_figure(chosen, summary["fit"], paper_name="toy_model")
        if figure is not None:
            figures[f"fit_{repeat}"] = figure
    figure = theory_figure(rows)
    if figure is not None:
        figures["theory"] = figure
    return figures


def theory_figure(rows: Sequence[Mapping[str, Any]]) -> Any | None:
    """Simulated emergence time against gradient flow's (log-log, the diagonal as the law)."""
    chosen = [row for row in rows if row["emergence_time"] and row["theory_time"]]
    if not chosen:
        return None
    theory = [row["theory_time"] for row in chosen]
    styles = emergence_styles(list(chosen))
    return power_law_figure(
        {"gradient-flow time": theory},
        [row["emergence_time"] for row in chosen],
        theory,
        formula="SGD time = gradient-flow time",
        x_name="gradient-flow time",
        y_title="SGD emergence time (steps)",
        styles=[styles[row["config_hash"]] for row in chosen],
    )
