"""The analysis of the ``emergence_recall`` experiment: Zucchet et al.'s check of their emergence
laws on in-context associative recall (`toy_tasks.InContextRecall`): emergence = steps to 5%
accuracy on test data without repetition, its power-law fit beside the paper's
``0.55 N_tokens^0.79 N_pairs^2.25``, and the speed-ups of in-context and cross-sample repetition
(the paper: ~4x and ~2x at N_pairs 32, N_tokens 256).

Runs that never reach a threshold are censored at their last step. A threshold the accuracy starts
at or above (``at_chance``: possible when 1 / N_tokens is above it) gives no time; such runs are
left out of the fit. Guessing a value of the context gives ``1 / N_pairs`` without attending to
the matching key, so at small N_pairs 5% is reached before recall emerges: the fit at 50%
(``fit_half``) is reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from workbench.analysis import PowerLawFit, starts_past, threshold_time
from workbench.experiments.base import AnalysisOutput, RunRecord, analysis, analysis_options
from workbench.experiments.curves import curve_figure, present_figures
from workbench.experiments.emergence_analysis import fit_points, fit_times
from workbench.experiments.reproduction import exponent_rows, ratio_row, reproduction_headline
from workbench.experiments.spec import ExperimentSpec, get_path
from workbench.runs import metric_series
from workbench.viz.experiments import Level, power_law_figure
from workbench.viz.style import Style, sweep_styles

RECALL_COVARIATES = {
    "N_tokens": "task.n_tokens",
    "N_pairs": "task.n_pairs",
    "B": "task.burstiness",
    "p": "task.cross_sample_p",
}
PAPER_RECALL_LAW = (0.55, {"N_tokens": 0.79, "N_pairs": 2.25})
"""Zucchet et al.: steps to 5% accuracy ``0.55 N_tokens^0.79 N_pairs^2.25``."""
PAPER_SPEEDUPS = {"in-context": 4.0, "cross-sample": 2.0}
"""The paper's speed-ups at N_pairs 32, N_tokens 256 (B and p of those runs: not in our summary
of the paper)."""


@analysis("emergence_recall")
def recall_analysis(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """Steps to each accuracy of ``thresholds`` (``accuracy_key``), the censored power-law fit
    of the steps to ``thresholds[0]`` (the paper's 5%) and to ``half`` over the runs without
    repetition beside the paper's law, and the repetition speed-ups. Figures: accuracy curves
    with the thresholds, the fit."""
    options = analysis_options(
        spec,
        {
            "accuracy_key": "eval_accuracy",
            "thresholds": [0.05, 0.5],
            "smoothing": 5,
            "persist": 3,
        },
    )
    rows = [recall_row(run, options) for run in runs]
    baseline = [row for row in rows if row["B"] == 1 and not row["p"] and not row["at_chance"]]
    results: dict[str, Any] = {"runs": rows, "n_runs": len(rows)}
    results |= fit_times(baseline, ["N_tokens", "N_pairs"])
    half = options["thresholds"][-1]
    results["fit_half"] = fit_times(
        [{**row, "emergence_time": row[f"steps_to_{half:g}"]} for row in baseline],
        ["N_tokens", "N_pairs"],
    )["fit"]
    results["speedups"] = repetition_speedups(rows)
    results["paper_vs_ours"] = recall_reproduction(results, half)
    styles = recall_styles(rows)

    def group(run: RunRecord) -> str:
        return recall_label(covariates(run.config))

    def style(run: RunRecord) -> Style:
        return styles[run.config_hash]

    levels = [Level(value, f"{value:.0%} accuracy") for value in options["thresholds"]]
    figures = present_figures(
        accuracy=curve_figure(
            runs,
            options["accuracy_key"],
            group,
            style,
            title="in-context recall: test accuracy (no repetition)",
            log_x=True,
            levels=levels,
        ),
        fit=recall_fit_figure(baseline, results.get("fit")),
    )
    headline = reproduction_headline(
        "in-context associative recall: steps to 5% accuracy and repetition speed-ups",
        results["paper_vs_ours"],
        f"{results['n_emerged']} of {len(baseline)} runs without repetition reached "
        f"{options['thresholds'][0]:.0%}",
    )
    return AnalysisOutput(results=results, figures=figures, headline=headline)


def covariates(config: Mapping[str, Any]) -> dict[str, Any]:
    return {name: get_path(config, path) for name, path in RECALL_COVARIATES.items()}


def recall_label(values: Mapping[str, Any]) -> str:
    """``"N_tokens=256 N_pairs=32"`` with `` B=..`` / `` p=..`` where there is repetition."""
    label = f"N_tokens={values['N_tokens']} N_pairs={values['N_pairs']}"
    label += f" B={values['B']}" if values["B"] > 1 else ""
    return label + (f" p={values['p']:g}" if values["p"] else "")


def recall_row(run: RunRecord, options: Mapping[str, Any]) -> dict[str, Any]:
    """Covariates, steps to each threshold (``steps_to_<t>``), ``at_chance`` (the accuracy
    starts at or above the first threshold), ``emergence_time`` (steps to the first) and the last
    step."""
    steps, accuracy = metric_series(run.metrics(), options["accuracy_key"])
    row: dict[str, Any] = {
        "config_hash": run.config_hash,
        "seed": run.config.get("seed"),
        **covariates(run.config),
        "finished": run.finished,
        "last_step": int(steps[-1]) if steps.size else None,
    }
    smoothing, persist = options["smoothing"], options["persist"]
    for threshold in options["thresholds"]:
        reached = (
            threshold_time(steps, accuracy, threshold, smoothing=smoothing, persist=persist)
            if steps.size
            else None
        )
        row[f"steps_to_{threshold:g}"] = reached
    first = options["thresholds"][0]
    row["at_chance"] = bool(steps.size) and starts_past(steps, accuracy, first, smoothing=smoothing)
    row["emergence_time"] = None if row["at_chance"] else row[f"steps_to_{first:g}"]
    return row


def repetition_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per repetition setting (B > 1, or p > 0): the ratios ``t(no repetition) / t(setting)`` of
    the runs that share (N_tokens, N_pairs, seed) and both reached the first threshold."""

    def key(row: Mapping[str, Any]) -> tuple[Any, ...]:
        return (row["N_tokens"], row["N_pairs"], row["seed"])

    baseline = {key(row): row["emergence_time"] for row in rows if row["B"] == 1 and not row["p"]}
    entries = []
    settings = sorted({(row["B"], row["p"]) for row in rows} - {(1, 0.0), (1, 0)})
    for burstiness, p in settings:
        ratios, at = [], set()
        for row in rows:
            before = baseline.get(key(row))
            if (row["B"], row["p"]) == (burstiness, p) and before and row["emergence_time"]:
                ratios.append(before / row["emergence_time"])
                at.add((row["N_tokens"], row["N_pairs"]))
        kind = "in-context" if burstiness > 1 else "cross-sample"
        entries.append({"kind": kind, "B": burstiness, "p": p, "ratios": ratios, "at": sorted(at)})
    return entries


def recall_reproduction(results: Mapping[str, Any], half: float) -> list[dict[str, Any]]:
    """The exponents (and prefactor) at 5% beside the paper's, ours at ``half`` (no paper
    number), and the repetition speed-ups."""
    prefactor, exponents = PAPER_RECALL_LAW
    fit = None if results.get("fit") is None else PowerLawFit.from_dict(results["fit"])
    complete = fit is not None and set(exponents) <= set(fit.names)
    rows = exponent_rows(fit, exponents, "recall, steps to 5%", prefactor if complete else None)
    half_fit = results.get("fit_half")
    if half_fit is not None:
        law = PowerLawFit.from_dict(half_fit)
        rows += [
            {**row, "paper": None, "reproduces": None, "note": "ours only"}
            for row in exponent_rows(law, exponents, f"recall, steps to {half:.0%}")
        ]
    for entry in results["speedups"]:
        setting = f"B={entry['B']}" if entry["kind"] == "in-context" else f"p={entry['p']:g}"
        where = ", ".join(f"N_tokens={t} N_pairs={n}" for t, n in entry["at"])
        rows.append(
            ratio_row(
                f"recall: speed-up of {entry['kind']} repetition {setting}",
                PAPER_SPEEDUPS[entry["kind"]],
                entry["ratios"],
                f"at {where}; the paper's at N_pairs 32, N_tokens 256" if where else "",
            )
        )
    return rows


def recall_styles(rows: Sequence[Mapping[str, Any]]) -> dict[str, Style]:
    """One hue per (N_tokens, B, p), shaded by N_pairs."""
    points = [{name: row[name] for name in RECALL_COVARIATES} for row in rows]
    styles = sweep_styles(points, "N_pairs") if points else []
    return {row["config_hash"]: style for row, style in zip(rows, styles, strict=True)}


def recall_fit_figure(rows: list[dict[str, Any]], fit: Mapping[str, Any] | None) -> Any | None:
    """Steps to 5% against N_pairs with the fitted law and the paper's N_pairs slope."""
    if fit is None:
        return None
    law = PowerLawFit.from_dict(fit)
    points, times, censored = fit_points(rows)
    values = {name: [row[name] for row in points] for name in law.names}
    x_name = "N_pairs" if "N_pairs" in values else law.names[0]
    return power_law_figure(
        values,
        times,
        law.predict(values).tolist(),
        formula=law.formula(),
        x_name=x_name,
        y_title="steps to 5% accuracy",
        censored=censored.tolist(),
        interval=None if law.covariance is None else law.predict_interval,
        confidence=law.confidence,
        reference_exponent=PAPER_RECALL_LAW[1].get(x_name),
        reference_name="paper",
    )
