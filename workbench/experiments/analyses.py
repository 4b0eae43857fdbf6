"""The analyses of the bundled experiments (``experiments/*.yaml``), registered by name.

They read the runs' configs (`workbench.train.TrainConfig` dicts: ``task`` as
``{name, <task parameters>}``, ``sparse`` (None = dense, else ``{method, hparams, ...}``), ``seed``) and
the runs' ``metrics.jsonl`` records (``step``, ``eval_loss``, ``eval_accuracy`` or ``eval_mse``, and
with the ``attention`` evaluation metric ``attention = {name: [layer][head]}``).
Options come from the spec's ``analysis`` mapping; unknown options raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workbench.analysis import (
    PowerLawFit,
    compare_exponents,
    emergence_time,
    fit_power_law,
    starts_past,
    threshold_time,
)
from workbench.experiments.base import (
    AnalysisOutput,
    Headline,
    RunRecord,
    analysis,
    analysis_options,
)
from workbench.experiments.spec import ExperimentSpec, config_hash, get_path
from workbench.metrics.stability import ROW_STATISTICS, stability_series
from workbench.runs import metric_series, sparse_setting
from workbench.viz.experiments import (
    Level,
    Mark,
    curves_figure,
    power_law_figure,
    relevant_mass_figure,
    table_figure,
)
from workbench.viz.stability import stability_figures
from workbench.viz.style import Style, series_style, sweep_styles, task_style

EMERGENCE_COVARIATES = {"T": "task.seq_len", "d": "task.d", "B": "task.burstiness"}
"""Covariate name -> config path of the emergence fit."""

PAPER_EXPONENTS = {
    "toy_model": {"T": 0.99, "B": -0.99, "d": 0.49},  # T_plateau = 1.51 T^0.99 B^-0.99 d^0.49
    "transformer": {"d": 1.29, "T": 0.80, "B": -0.80},  # T_plateau = 0.76 d^1.29 T^0.80 B^-0.80
}
"""Zucchet et al.'s fitted emergence-time exponents (arXiv 2505.17863)."""


def _label(config: Mapping[str, Any], paths: Mapping[str, str]) -> str:
    """``"T=64 B=4"`` from the values at ``paths`` (``{name: config path}``)."""
    return " ".join(f"{name}={get_path(config, path)}" for name, path in paths.items())


def _curve_figure(
    runs: list[RunRecord],
    key: str,
    group: Callable[[RunRecord], str],
    style: Callable[[RunRecord], Style],
    *,
    panel: Callable[[RunRecord], str] | None = None,
    **layout: Any,
) -> Any | None:
    """`curves_figure` of metric ``key`` of every run that logged it (None if none did): one
    legend entry per ``group(run)`` drawn in ``style(run)``, one subplot per ``panel(run)``."""
    curves = {run.config_hash: metric_series(run.metrics(), key) for run in runs}
    curves = {name: curve for name, curve in curves.items() if curve[0].size}
    if not curves:
        return None
    groups = {run.config_hash: group(run) for run in runs}
    styles = {group(run): style(run) for run in runs}
    panels = {run.config_hash: panel(run) for run in runs} if panel else None
    return curves_figure(curves, groups=groups, styles=styles, panels=panels, y_title=key, **layout)


def _figures(**figures: Any) -> dict[str, Any]:
    """The figures that are not None."""
    return {name: figure for name, figure in figures.items() if figure is not None}


@analysis("emergence")
def emergence_analysis(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """Emergence time of every run (`emergence_time` of ``loss_key``), a power-law fit against
    the covariates that vary (of T = seq_len, d, B = burstiness) with 95% intervals, and the
    comparison with the paper's exponents (``paper``: ``"transformer"`` or ``"toy_model"``).
    ``initial_loss``: the reference of the 0.2 x threshold (None: each run's loss at step 0; the
    paper's toy model starts at the zero predictor's loss 0.5, which a randomly initialised
    transformer does not). Figures: loss curves, relevant-mass curves (with the ``attention`` metric), fit."""
    options = analysis_options(
        spec,
        {
            "paper": "transformer",
            "loss_key": "eval_loss",
            "fraction": 0.2,
            "initial_loss": None,
            "smoothing": 5,
            "persist": 3,
        },
    )
    if options["paper"] not in PAPER_EXPONENTS:
        raise ValueError(
            f"paper must be one of {sorted(PAPER_EXPONENTS)}, got {options['paper']!r}"
        )
    paper = PAPER_EXPONENTS[options["paper"]]
    rows = [_emergence_row(run, options) for run in runs]
    results: dict[str, Any] = {"runs": rows, **_emergence_fit(rows, paper)}
    styles = emergence_styles(rows)

    def group(run: RunRecord) -> str:
        return _label(run.config, EMERGENCE_COVARIATES)

    def style(run: RunRecord) -> Style:
        return styles[run.config_hash]

    figures = _figures(
        loss=emergence_loss_figure(runs, rows, options, group, style),
        relevant_mass=relevant_mass_figure(
            {run.config_hash: run.metrics() for run in runs},
            {run.config_hash: group(run) for run in runs},
            styles={run.config_hash: style(run) for run in runs},
        ),
        fit=emergence_fit_figure(
            rows, results.get("fit"), paper=paper, paper_name=options["paper"]
        ),
    )
    headline = emergence_headline(results, options["paper"])
    return AnalysisOutput(results=results, figures=figures, headline=headline)


def emergence_headline(results: Mapping[str, Any], paper: str) -> Headline:
    """The fitted exponents with their 95% intervals beside the paper's."""
    fit = results.get("fit")
    counts = f"{results['n_emerged']} of {results['n_runs']} runs emerged"
    if fit is None:
        reason = results.get("fit_error", "no fit")
        return Headline("emergence time", ["runs", "fit"], [[counts, reason]])
    rows = [
        [
            row["name"],
            f"{row['ours']:.2f}",
            f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]",
            f"{row['paper']:.2f}",
            "yes" if row["within_ci"] else "no",
        ]
        for row in results["comparison"]
    ]
    formula = fit["formula"]
    censored = f", {results['n_censored']} censored" if results["n_censored"] else ""
    return Headline(
        f"emergence time = {formula} (95% intervals; paper: Zucchet et al., {paper} fit)",
        ["exponent", "ours", "95% interval", "paper", "paper inside"],
        rows,
        note=f"{counts}{censored}; R^2 {fit['r2']:.3f}",
    )


def emergence_styles(rows: list[dict[str, Any]]) -> dict[str, Style]:
    """``{config_hash: Style}`` of the emergence runs (``results["runs"]`` rows), the same in the
    loss, relevant-mass and fit figures: one hue per combination of d and B, shaded by T
    (`sweep_styles`)."""
    points = [{name: row[name] for name in EMERGENCE_COVARIATES} for row in rows]
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
    return _curve_figure(
        runs,
        key,
        group,
        style,
        title="test loss (colour: d and B, darker for longer T)",
        log_y=True,
        levels=levels,
        marks=marks,
    )


def _emergence_row(run: RunRecord, options: Mapping[str, Any]) -> dict[str, Any]:
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
    covariates = {name: get_path(run.config, path) for name, path in EMERGENCE_COVARIATES.items()}
    return {
        "config_hash": run.config_hash,
        "seed": run.config.get("seed"),
        **covariates,
        "emergence_time": time,
        # An unfinished run without an emergence time: not emerged by `last_step` (censored).
        "finished": run.finished,
        "last_step": int(steps[-1]) if steps.size else None,
    }


def _emergence_fit(rows: list[dict[str, Any]], paper: Mapping[str, float]) -> dict[str, Any]:
    """Power-law fit of the emergence times on the covariates that vary among the runs that
    emerged. A run without an emergence time is censored at its last logged step (it emerged
    later, if ever): with such runs the fit is the censored maximum-likelihood one, and
    ``fit_emerged_only`` (least squares over the emerged runs alone) is given beside it."""
    emerged = [row for row in rows if row["emergence_time"]]
    points, times, censored = _fit_points(rows)
    varying = [name for name in EMERGENCE_COVARIATES if len({row[name] for row in emerged}) > 1]
    summary: dict[str, Any] = {
        "n_emerged": len(emerged),
        "n_censored": int(censored.sum()),
        "n_runs": len(rows),
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
    summary["comparison"] = compare_exponents(
        fit, {name: value for name, value in paper.items() if name in fit.names}
    )
    return summary


def emergence_fit_figure(
    rows: list[dict[str, Any]],
    fit: Mapping[str, Any] | None,
    *,
    paper: Mapping[str, float] | None = None,
    paper_name: str = "transformer",
) -> Any | None:
    """`power_law_figure` of an emergence analysis' ``results["runs"]`` rows and
    ``results["fit"]`` (None without a fit): emerged runs, censored runs as lower bounds, the
    fit with its confidence band (fits that record their covariance) and the paper's exponent
    of the x covariate (``paper``, default Zucchet et al.'s ``paper_name`` fit) as a dashed
    slope."""
    if fit is None:
        return None
    law = PowerLawFit.from_dict(fit)
    points, times, censored = _fit_points(rows)
    covariates = {name: [row[name] for row in points] for name in law.names}
    x_name = "T" if "T" in covariates else law.names[0]
    paper = PAPER_EXPONENTS[paper_name] if paper is None else paper
    styles = emergence_styles(rows)
    return power_law_figure(
        covariates,
        times,
        law.predict(covariates).tolist(),
        formula=_formula_with_intervals(law),
        x_name=x_name,
        censored=censored.tolist(),
        interval=None if law.covariance is None else law.predict_interval,
        confidence=law.confidence,
        reference_exponent=paper.get(x_name),
        reference_name=f"paper ({paper_name})",
        styles=[styles[row["config_hash"]] for row in points],
    )


def _formula_with_intervals(fit: PowerLawFit) -> str:
    """E.g. ``"0.03 T^0.61 [0.31, 0.91] B^-0.50 [-0.99, -0.01]"``."""
    terms = [
        f"{name}^{fit.exponents[name]:.2f} [{fit.intervals[name][0]:.2f}, "
        f"{fit.intervals[name][1]:.2f}]"
        for name in fit.names
    ]
    return " ".join([f"{fit.prefactor:.3g}", *terms])


def _fit_points(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[float], np.ndarray]:
    """The rows that enter the emergence fit, their times and which are censored ``[n]`` bool: an
    emerged run at its emergence time, a run without one at its last logged step (it emerged
    later, if ever)."""
    points = [row for row in rows if row["emergence_time"] or row.get("last_step")]
    times = [row["emergence_time"] or row["last_step"] for row in points]
    return points, times, np.array([not row["emergence_time"] for row in points], dtype=bool)


def method_label(config: Mapping[str, Any]) -> str:
    """``"dense"`` or e.g. ``"top_k(k=5)"`` from a run config's ``sparse`` entry, with
    ``" layers 0,1"`` where the method runs on some layers only."""
    sparse = sparse_setting(config)
    if sparse is None:
        return "dense"
    hparams = sorted((sparse.get("hparams") or {}).items())
    label = f"{sparse['method']}({', '.join(f'{key}={value}' for key, value in hparams)})"
    layers = sparse.get("layers")
    return label if layers is None else f"{label} layers {','.join(map(str, layers))}"


@analysis("semantic_focus_recall")
def recall_study_analysis(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """Per task and sparse method: steps to reach each accuracy in ``thresholds``
    (`threshold_time`; "at chance" instead where the accuracy starts at or above the threshold:
    ``steps_to_<t>`` None and ``at_chance_<t>`` true), final accuracy, and the final value of
    every other metric starting with ``accuracy_key`` (e.g. ``eval_accuracy_train``: on the
    training set). Runs trained with the ``stability`` evaluation metric add the final softmax
    stability (`_stability_row`) and a summary per task and kind of attention (dense,
    input-dependent, input-agnostic). Figures (one panel per task, a fixed colour per method):
    accuracy curves with the thresholds and the steps that reach them, loss curves, summary
    table, stability curves."""
    options = analysis_options(
        spec,
        {
            "accuracy_key": "eval_accuracy",
            "thresholds": [0.05, 0.5, 0.9],
            "smoothing": 5,
            "persist": 3,
        },
    )
    key = options["accuracy_key"]
    tasks = task_labels(runs)
    rows = [
        {"task": tasks[run.config_hash]} | _focus_row(run, options) | _stability_row(run)
        for run in runs
    ]
    stability = [name for name in rows[0] if name.startswith("final_")] if rows else []
    summary = (
        _summarise_by(
            rows,
            ("task", "method"),
            [name for name in rows[0] if name.startswith(key)] + stability,
        )
        if rows
        else []
    )
    by_kind = _summarise_by(rows, ("task", "kind"), stability) if stability else []

    def group(run: RunRecord) -> str:
        return method_label(run.config)

    def style(run: RunRecord) -> Style:
        return series_style(method=method_label(run.config))

    def panel(run: RunRecord) -> str:
        return tasks[run.config_hash] if len(set(tasks.values())) > 1 else ""

    levels, marks = _threshold_levels_and_marks(runs, rows, options["thresholds"], panel)
    figures = _figures(
        accuracy=_curve_figure(
            runs,
            key,
            group,
            style,
            panel=panel,
            title="held-out accuracy per task and method",
            levels=levels,
            marks=marks,
        ),
        loss=_curve_figure(
            runs,
            "loss",
            group,
            style,
            panel=panel,
            title="training loss per task and method",
            log_y=True,
        ),
        summary=table_figure(
            summary_table_rows(summary, options["thresholds"]),
            title="semantic focus: per task and method",
        )
        if summary
        else None,
    )
    figures |= stability_figures(
        {run.config_hash: run.metrics() for run in runs},
        {run.config_hash: group(run) for run in runs},
        styles={run.config_hash: style(run) for run in runs},
        panels={run.config_hash: panel(run) for run in runs},
    )
    results = {"runs": rows, "methods": summary}
    if by_kind:
        results["stability_by_kind"] = by_kind
    headline = semantic_focus_headline(summary, key, options["thresholds"])
    return AnalysisOutput(results=results, figures=figures, headline=headline)


@analysis("trainable_sparse")
def trainable_sparse_analysis(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """`recall_study_analysis` (steps to each accuracy, final held-out accuracy per task and
    method, accuracy / loss curves, summary table), with each run's last logged auxiliary losses
    of its learned method (``final_sparse_losses``, e.g. the gate's distillation loss)."""
    output = recall_study_analysis(spec, runs)
    losses = {run.config_hash: _last_sparse_losses(run) for run in runs}
    for row in output.results["runs"]:
        if losses[row["config_hash"]]:
            row["final_sparse_losses"] = losses[row["config_hash"]]
    headline = output.headline
    if headline is not None:
        headline = dataclasses.replace(
            headline, title="trainable sparse attention: accuracy per task and method"
        )
    return dataclasses.replace(output, headline=headline)


def _last_sparse_losses(run: RunRecord) -> dict[str, float]:
    """The ``sparse_losses`` of the run's last training record that has them (empty: none)."""
    logged = [record["sparse_losses"] for record in run.metrics() if "sparse_losses" in record]
    return logged[-1] if logged else {}


def semantic_focus_headline(
    summary: list[dict[str, Any]], key: str, thresholds: Sequence[float]
) -> Headline:
    """Per task and method: the median steps to each accuracy threshold (with how many runs
    reached it) and the final accuracy, held-out and (with a fixed training set) on it."""
    train_key = f"mean_{key}_train"
    columns = ["task", "method", *(f"steps to {t:g}" for t in thresholds), "final " + key]
    if any(train_key in row for row in summary):
        columns.append("on training set")
    rows = []
    for row in summary:
        cells = [row["task"], row["method"]]
        cells += [_steps_cell(row, f"{threshold:g}") for threshold in thresholds]
        cells.append(f"{row.get(f'mean_{key}', float('nan')):.3f}")
        if len(columns) > len(cells):
            cells.append(f"{row.get(train_key, float('nan')):.3f}")
        rows.append(cells)
    return Headline(
        "semantic focus: steps to accuracy and final accuracy per task and method",
        columns,
        rows,
        note="steps: median over the runs that reached the threshold (reached / runs when not "
        "all did); at chance: the accuracy starts above the threshold",
    )


def _percent(threshold: float) -> str:
    """``0.05`` -> ``"5%"``."""
    return f"{100 * threshold:g}%"


def _threshold_levels_and_marks(
    runs: list[RunRecord],
    rows: list[dict[str, Any]],
    thresholds: Sequence[float],
    panel: Callable[[RunRecord], str],
) -> tuple[list[Level], list[Mark]]:
    """The accuracy thresholds as levels of each panel (named "at chance" where every run of the
    panel starts at or above it) and a mark where each run reaches one."""
    row_of = {row["config_hash"]: row for row in rows}
    levels, marks = [], []
    for threshold in thresholds:
        name = f"{threshold:g}"
        for current in sorted({panel(run) for run in runs}):
            chosen = [row_of[run.config_hash] for run in runs if panel(run) == current]
            at_chance = all(row[f"at_chance_{name}"] for row in chosen)
            label = f"{_percent(threshold)} accuracy"
            if at_chance:  # every run of the panel starts at or above it
                label += f": at chance in {current}" if current else ": at chance"
            levels.append(Level(threshold, label, panel=current))
        for run in runs:
            step = row_of[run.config_hash][f"steps_to_{name}"]
            if step is not None:
                text = f"{method_label(run.config)}: {_percent(threshold)} at step {step:.0f}"
                marks.append(Mark(run.config_hash, step, threshold, text, "threshold reached"))
    return levels, marks


def summary_table_rows(
    summary: list[dict[str, Any]], thresholds: Sequence[float]
) -> list[dict[str, Any]]:
    """The rows of the summary table: the columns of ``summary`` (`_summarise_by` of the
    semantic-focus runs) under readable names, steps to each threshold as one column ("at
    chance" where every run started above it, "not reached", or the median step with the share
    of runs that reached it)."""
    table = []
    for entry in summary:
        row: dict[str, Any] = {"task": entry["task"], "method": entry["method"]}
        row["runs"] = entry["runs"]
        for threshold in thresholds:
            row[f"steps to {_percent(threshold)} accuracy (median)"] = _steps_cell(
                entry, f"{threshold:g}"
            )
        for name, value in entry.items():
            if name.startswith("mean_"):
                row[_mean_header(name[len("mean_") :])] = value
        table.append(row)
    return table


def _steps_cell(entry: Mapping[str, Any], name: str) -> str:
    runs, reached = entry["runs"], entry[f"reached_{name}"]
    at_chance = entry.get(f"at_chance_{name}", 0)
    if at_chance == runs:
        return "at chance"
    if entry[f"median_steps_to_{name}"] is None:
        return "not reached" + (f" ({at_chance} at chance)" if at_chance else "")
    cell = f"{entry[f'median_steps_to_{name}']:.0f}"
    if reached < runs:
        cell += f" ({reached}/{runs} runs" + (f", {at_chance} at chance)" if at_chance else ")")
    return cell


MEAN_HEADERS = {
    "eval_accuracy": "held-out accuracy",
    "eval_accuracy_train": "training-set accuracy",
    "final_jacobian_norm": "||J||_2, dense softmax",
    "final_method_jacobian_norm": "||J||_2, method's softmax",
    "final_top_k_margin": "top-k margin",
}
"""Column names of the summary table for the means of `_summarise_by`."""


def _mean_header(name: str) -> str:
    return f"{MEAN_HEADERS.get(name, name.replace('_', ' '))} (final, mean)"


def task_labels(runs: list[RunRecord]) -> dict[str, str]:
    """``{config_hash: label}`` of each run's task: its name, or the name and its settings where
    runs have different settings under one name (e.g. ``"assoc_recall(seq_len=64)"``)."""
    settings = {run.config_hash: _task_settings(run.config["task"]) for run in runs}
    labels = {}
    for digest, mine in settings.items():
        variants = [other for other in settings.values() if other["name"] == mine["name"]]
        varying = sorted(
            field
            for field in set().union(*variants)
            if len({repr(variant.get(field)) for variant in variants}) > 1
        )
        values = ", ".join(f"{field}={mine.get(field)}" for field in varying)
        labels[digest] = f"{mine['name']}({values})" if values else mine["name"]
    return labels


def _task_settings(task: str | Mapping[str, Any]) -> dict[str, Any]:
    """A config's ``task`` (a name, or a mapping with ``name``) as a mapping."""
    return dict(task) if isinstance(task, Mapping) else {"name": task}


def _attention_kind(config: Mapping[str, Any]) -> str:
    """``"dense"``, ``"input-dependent"`` or ``"input-agnostic"`` sparse attention."""
    import workbench.sparse

    sparse = sparse_setting(config)
    if sparse is None:
        return "dense"
    dependent = workbench.sparse.get(sparse["method"], **sparse.get("hparams", {})).input_dependent
    return "input-dependent" if dependent else "input-agnostic"


def _stability_row(run: RunRecord) -> dict[str, Any]:
    """The attention kind and, when the run logged stability metrics, the last evaluation's
    ``final_<name>`` of each `ROW_STATISTICS` (mean over layers and heads)."""
    row: dict[str, Any] = {"kind": _attention_kind(run.config)}
    for name in ROW_STATISTICS:
        steps, values = stability_series(run.metrics(), name)  # [m], [m, layers, heads]
        if steps.size:
            row[f"final_{name}"] = float(values[-1].mean())
    return row


def _focus_row(run: RunRecord, options: Mapping[str, Any]) -> dict[str, Any]:
    records = run.metrics()
    key = options["accuracy_key"]
    steps, accuracy = metric_series(records, key)
    row: dict[str, Any] = {
        "config_hash": run.config_hash,
        "method": method_label(run.config),
        "seed": run.config.get("seed"),
    }
    for threshold in options["thresholds"]:
        # A threshold the accuracy starts above (below chance): no time to reach it.
        at_chance = bool(steps.size) and starts_past(
            steps, accuracy, threshold, "above", smoothing=options["smoothing"]
        )
        row[f"steps_to_{threshold:g}"] = (
            threshold_time(
                steps,
                accuracy,
                threshold,
                "above",
                smoothing=options["smoothing"],
                persist=options["persist"],
            )
            if steps.size and not at_chance
            else None
        )
        row[f"at_chance_{threshold:g}"] = at_chance
    finals = {name for record in records for name in record if name.startswith(key)}
    for name in sorted(finals):
        values = metric_series(records, name)[1]
        row[name] = float(values[-1]) if values.size else None
    return row


def _summarise_by(
    rows: list[dict[str, Any]], by: Sequence[str], mean_keys: list[str]
) -> list[dict[str, Any]]:
    """Per combination of the values of ``by`` (row keys): the number of runs, the mean of
    ``mean_keys`` and, for each ``steps_to_*`` key, the median over the runs that reached it,
    their count and the count of runs that started above it (``at_chance_*``)."""
    summary = []
    for combination in dict.fromkeys(tuple(row[key] for key in by) for row in rows):
        group = [row for row in rows if tuple(row[key] for key in by) == combination]
        entry: dict[str, Any] = {**dict(zip(by, combination, strict=True)), "runs": len(group)}
        for name in mean_keys:
            values = [row[name] for row in group if row.get(name) is not None]
            entry[f"mean_{name}"] = float(np.mean(values)) if values else None
        for name in (name for name in group[0] if name.startswith("steps_to_")):
            reached = [row[name] for row in group if row[name] is not None]
            entry[f"median_{name}"] = float(np.median(reached)) if reached else None
            threshold = name[len("steps_to_") :]
            entry[f"reached_{threshold}"] = len(reached)
            entry[f"at_chance_{threshold}"] = sum(
                bool(row.get(f"at_chance_{threshold}")) for row in group
            )
        summary.append(entry)
    return summary


def load_model(run_dir: Path) -> Any:
    """The trained model of a finished run, in eval mode, from its final checkpoint:
    `workbench.train.load_model` (on CPU). Contract: a ``torch.nn.Module`` mapping inputs
    ``[batch, seq_len, d_input]`` to outputs ``[batch, seq_len, d_output]``."""
    from workbench.train import load_model as load_checkpoint

    model, _, _ = load_checkpoint(run_dir)
    return model


@analysis("icl_linreg")
def icl_linreg_analysis(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """Garg et al.'s evaluation: the squared error / d of every trained model's prediction of
    ``y_{k+1}`` against the number ``k`` of in-context examples, next to least squares, ridge
    (``ridge_alpha``), ``knn_k``-nearest neighbours and averaging on the same ``eval_examples``
    prompts (seed ``eval_seed``). Figures: one error curve plot per task config, test loss."""
    options = analysis_options(
        spec, {"eval_examples": 1024, "eval_seed": 12345, "ridge_alpha": 0.1, "knn_k": 3}
    )
    results = icl_error_curves(runs, options, load_model)
    figures = {
        f"error_curves_{name}": curves_figure(
            {label: (range(len(curve)), curve) for label, curve in curves.items()},
            title=f"in-context regression, {name}",
            x_title="in-context examples k",
            y_title="squared error / d",
            groups={label: label.split(" ")[0] for label in curves},
        )
        for name, curves in results["curves"].items()
    }
    loss = _curve_figure(
        runs,
        "eval_loss",
        lambda run: _label(run.config, {"task": "task.name"}),
        lambda run: task_style(_task_settings(run.config["task"])["name"]),
        title="test loss",
        log_y=True,
    )
    headline = icl_headline(results["curves"])
    return AnalysisOutput(
        results=results, figures={**figures, **_figures(loss=loss)}, headline=headline
    )


def icl_headline(curves: Mapping[str, Mapping[str, list[float]]]) -> Headline:
    """Per task config and predictor: the squared error / d after a quarter, half and all but one
    of the prompt's examples (curves index the number of in-context examples k)."""
    rows, ks = [], []
    for name, task_curves in curves.items():
        for label, curve in task_curves.items():
            ks = [len(curve) // 4, len(curve) // 2, len(curve) - 1]
            rows.append([name, label, *(f"{curve[k]:.3f}" for k in ks)])
    return Headline(
        "in-context regression: squared error / d after k examples",
        ["task", "predictor", *(f"k={k}" for k in ks)],
        rows,
    )


def icl_error_curves(
    runs: list[RunRecord], options: Mapping[str, Any], load: Callable[[Path], Any]
) -> dict[str, Any]:
    """``{"curves": {task label: {curve label: [n_points] errors}}}``: each run's model (loaded by
    ``load(run_dir)``) as ``"model seed=<s>"`` and the baselines, per distinct task config."""
    import torch

    import toy_tasks
    from toy_tasks import baselines

    curves: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        task = toy_tasks.get(**run.config["task"])
        name = f"d{task.d}_n{task.n_points}_{config_hash(task.to_dict())[:6]}"
        batch = task.sample(
            options["eval_examples"], torch.Generator().manual_seed(options["eval_seed"])
        )
        if name not in curves:
            curves[name] = {
                "least_squares": baselines.least_squares_curve(batch).tolist(),
                f"ridge alpha={options['ridge_alpha']}": baselines.ridge_curve(
                    batch, options["ridge_alpha"]
                ).tolist(),
                f"{options['knn_k']}-NN": baselines.knn_curve(batch, options["knn_k"]).tolist(),
                "averaging": baselines.averaging_curve(batch).tolist(),
            }
        model = load(run.directory)
        device = next(model.parameters()).device
        with torch.no_grad():
            outputs = model(batch.inputs.to(device)).cpu()
        predictions = outputs[:, 0::2, 0]
        curves[name][f"model seed={run.config.get('seed')}"] = baselines.error_curve(
            batch, predictions
        ).tolist()
    return {"curves": curves}
