"""The analyses of the bundled experiments (``experiments/*.yaml``), registered by name.

They read the runs' configs (`workbench.train.TrainConfig` dicts: ``task`` as
``{name, <task parameters>}``, ``sparse`` (None = dense, else ``{method, hparams, ...}``), ``seed``) and
the runs' ``metrics.jsonl`` records (``step``, ``eval_loss``, ``eval_accuracy`` or ``eval_mse``, and
with the ``attention`` evaluation metric ``attention = {name: [layer][head]}``).
Options come from the spec's ``analysis`` mapping; unknown options raise ``ValueError``.

This module holds the recall study (``semantic_focus_recall``, our extension of the semantic-focus
paper) and ``trainable_sparse``; the others have their own modules, imported here so that importing
it registers every analysis: `workbench.experiments.emergence_analysis` (``emergence``),
`emergence_toy_analysis` (``emergence_toy``), `recall_analysis` (``emergence_recall``),
`icl_analysis` (``icl_linreg``) and `semantic_focus_analysis` (``semantic_focus``, the paper's
set-up).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from workbench.analysis import starts_past, threshold_time
from workbench.experiments import emergence_toy_analysis, recall_analysis  # noqa: F401
from workbench.experiments.base import (
    AnalysisOutput,
    Headline,
    RunRecord,
    analysis,
    analysis_options,
)
from workbench.experiments.curves import curve_figure, present_figures, task_settings
from workbench.experiments.emergence_analysis import (  # noqa: F401  (re-exported)
    EMERGENCE_COVARIATES,
    PAPER_EXPONENTS,
    PAPER_LAWS,
    emergence_analysis,
    emergence_fit_figure,
    emergence_headline,
    emergence_loss_figure,
    emergence_styles,
    emergence_threshold,
    exponents_by_length_figure,
)
from workbench.experiments.icl_analysis import (  # noqa: F401  (re-exported)
    icl_error_curves,
    icl_linreg_analysis,
    load_model,
)
from workbench.experiments.spec import ExperimentSpec
from workbench.metrics.stability import ROW_STATISTICS
from workbench.runs import attention_series, metric_series, sparse_setting
from workbench.viz.experiments import Level, Mark, table_figure
from workbench.viz.stability import stability_figures
from workbench.viz.style import Style, series_style


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
    figures = present_figures(
        accuracy=curve_figure(
            runs,
            key,
            group,
            style,
            panel=panel,
            title="held-out accuracy per task and method",
            levels=levels,
            marks=marks,
        ),
        loss=curve_figure(
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
    settings = {run.config_hash: task_settings(run.config["task"]) for run in runs}
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
        steps, values = attention_series(
            run.metrics(), name, group="stability"
        )  # [m], [m, layers, heads]
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
