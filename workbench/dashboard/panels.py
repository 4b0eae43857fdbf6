"""The figures of the dashboard's panels, and of ``workbench report``: compositions of the pure
builders of `workbench.viz` over what `workbench.dashboard.data` loads (runs, attention subjects,
SAEs). No Dash here: the callbacks and the report call the same functions.

Colours come from `workbench.viz.style` through the builders: a method (``"dense"``, ``"top_k"``)
keeps its colour in every panel, a layer its line dash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from toy_tasks.base import check_int
from workbench.analysis import emergence_time
from workbench.dashboard.data import READ_ERRORS, AttentionSubject, SAEView
from workbench.experiments.analyses import (
    PAPER_EXPONENTS,
    emergence_fit_figure,
    exponents_by_length_figure,
    method_label,
)
from workbench.metrics.fidelity import HeadSelection, fidelity, head_selection
from workbench.runs import Analysis, Run, metric_series
from workbench.sparse.base import SparseMethod
from workbench.viz.attention import Window
from workbench.viz.experiments import Level, Mark, curves_figure, relevant_mass_figure, table_figure
from workbench.viz.fidelity import fidelity_figure
from workbench.viz.methods import methods_figure
from workbench.viz.sae import (
    feature_density_figure,
    head_attribution_figure,
    sae_loss_figure,
    top_examples_figure,
    variable_match_figure,
)
from workbench.viz.stability import stability_figures
from workbench.viz.style import Style, series_style
from workbench.viz.trace import pattern_figure, trace_figure

CURVES = {
    "eval_loss": "evaluation loss",
    "eval_accuracy": "evaluation accuracy",
    "eval_mse": "evaluation MSE",
    "loss": "training loss (batch)",
}
"""Scalar metrics drawn for the selected runs, with their titles."""
EMERGENCE_FRACTION = 0.2
"""A run has emerged once its evaluation loss reaches this fraction of its initial loss."""
STRONGEST_FEATURES = 12
"""Features of an SAE's head-attribution panel."""


def sparse_label(method: SparseMethod) -> str:
    """``"top_k(k=4)"``: the method's name and hyper-parameters (the label `workbench.viz.style`
    colours by its name)."""
    settings = ", ".join(f"{key}={value}" for key, value in method.hyper_parameters().items())
    return f"{method.name}({settings})"


# ---------------------------------------------------------------------------- runs
def run_label(key: str, run: Run) -> str:
    """``"<method label> <hash>"`` of a run (its key where the config cannot be read)."""
    try:
        return f"{method_label(run.config() or {})} {run.name}"
    except READ_ERRORS:
        return key


def run_style(run: Run) -> Style:
    """The run's method colour and task symbol (`series_style`)."""
    try:
        config = run.config() or {}
        task = config.get("task")
        name = task.get("name") if isinstance(task, Mapping) else task
        return series_style(method=method_label(config), task=name)
    except READ_ERRORS:
        return series_style()


def curves_figures(runs: Mapping[str, Run]) -> tuple[dict[str, go.Figure], list[str]]:
    """Training curves of ``runs`` (``{key: Run}``) side by side: evaluation loss (log scale,
    each run's emergence threshold dotted and a dot where it emerged: `emergence_time`),
    accuracy or MSE, training loss, relevant mass (best head per layer) and the logged
    softmax-stability metrics; and the problems met (runs whose metrics cannot be read, or that
    logged nothing). Figures without data are left out."""
    records, labels, styles, problems = {}, {}, {}, []
    for key, run in runs.items():
        try:
            logged = run.metrics()
        except READ_ERRORS as error:
            problems.append(f"{key}: metrics unreadable ({type(error).__name__}: {error})")
            continue
        if not logged:
            problems.append(f"{key}: no metrics logged yet")
            continue
        label = run_label(key, run)
        records[label], labels[label], styles[label] = logged, label, run_style(run)
    figures: dict[str, go.Figure] = {}
    for name, title in CURVES.items():
        curves = {label: metric_series(logged, name) for label, logged in records.items()}
        curves = {label: curve for label, curve in curves.items() if curve[0].size}
        if not curves:
            continue
        levels, marks = emergence_marks(curves) if name == "eval_loss" else ([], [])
        figures[name] = curves_figure(
            curves,
            groups=labels,
            styles=styles,
            title=title,
            y_title=name,
            log_y=name in ("eval_loss", "loss", "eval_mse"),
            levels=levels,
            marks=marks,
        )
    mass = relevant_mass_figure(records, labels, styles=styles)
    if mass is not None:
        figures["relevant_mass"] = mass
    figures |= stability_figures(records, labels, styles=styles)
    return figures, problems


def emergence_marks(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[list[Level], list[Mark]]:
    """Each loss curve's emergence threshold (`EMERGENCE_FRACTION` x its initial loss, dotted)
    and a mark at its emergence time, where it emerged."""
    levels, marks = [], []
    for label, (steps, losses) in curves.items():
        finite = losses[np.isfinite(losses)]
        if finite.size < 2 or finite[0] <= 0:
            continue
        threshold = EMERGENCE_FRACTION * float(finite[0])
        levels.append(Level(threshold, f"{EMERGENCE_FRACTION:g} x initial loss", curve=label))
        time = emergence_time(steps, losses, fraction=EMERGENCE_FRACTION)
        if time is not None:
            text = f"{label}: emerged at step {time:.0f}"
            marks.append(Mark(label, time, threshold, text, "emergence"))
    return levels, marks


def _fit_results(analysis: Analysis) -> tuple[dict[str, Any], str]:
    """The results of an emergence analysis and the paper it compares with; ``ValueError`` when
    it holds no fit or names an unknown paper."""
    results = analysis.results() or {}
    if not results.get("fit") or not results.get("runs"):
        raise ValueError(f"{analysis.path} holds no power-law fit")
    paper = (analysis.spec().get("analysis") or {}).get("paper", "transformer")
    if paper not in PAPER_EXPONENTS:
        raise ValueError(f"{analysis.path}: unknown paper {paper!r} in its analysis options")
    return results, paper


def fit_figures(analysis: Analysis) -> list[go.Figure]:
    """The power-law fit of an emergence analysis (`emergence_fit_figure`: the runs' emergence
    times, the fit with its band, the paper's slope) and, where the analysis fitted from longer
    lengths too, the exponents against the shortest length fitted
    (`exponents_by_length_figure`); ``ValueError`` when it holds no fit."""
    results, paper = _fit_results(analysis)
    figure = emergence_fit_figure(results["runs"], results["fit"], paper_name=paper)
    figure.update_layout(title=f"emergence time: {results['fit'].get('formula', '')}")
    exponents = exponents_by_length_figure(results["runs"], results, paper)
    return [figure] if exponents is None else [figure, exponents]


def index_table(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """The run index as a table figure (the report's)."""
    columns = ["id", "status", "task", "method", "seed", "last_step", "eval_loss"]
    columns += [
        key for key in ("eval_accuracy", "eval_mse", "error") if any(key in r for r in rows)
    ]
    return table_figure(
        [{column: row.get(column) for column in columns} for row in rows], title="runs"
    )


# ---------------------------------------------------------------------------- attention
def grid_figure(subject: AttentionSubject, statistic: str = "entropy") -> go.Figure:
    """Layer x head grid of the subject's per-head statistics (`trace_figure`; a menu switches
    among entropy, max weight, sink mass, relevant mass, ``k_p``); clicking a cell selects its
    head (``customdata`` ``[layer, head]``)."""
    names = subject.trace.statistic_names()
    if not names:
        raise ValueError(f"{subject.name} recorded no statistics")
    figure = trace_figure(subject.trace, statistic if statistic in names else names[0])
    figure.update_layout(height=max(360, 160 + 60 * len(subject.trace.layers)))
    return figure


def check_head(subject: AttentionSubject, layer: int, head: int, example: int) -> None:
    """``ValueError`` naming the first of ``layer``, ``head``, ``example`` the subject lacks."""
    trace = subject.trace
    if layer not in trace.patterns:
        raise ValueError(
            f"layer must be one of the layers with a recorded pattern {sorted(trace.patterns)}, "
            f"got {layer!r}"
        )
    if head not in trace.heads:
        raise ValueError(f"head must be one of {trace.heads}, got {head!r}")
    check_int("example", example, 0, subject.examples - 1)


def pattern_panel(
    subject: AttentionSubject,
    *,
    layer: int,
    head: int,
    example: int = 0,
    method: SparseMethod | None = None,
    block_size: int = 16,
    window: Window | None = None,
) -> tuple[go.Figure, HeadSelection | None]:
    """The pattern of one head of one example, token-labelled, the ground-truth relevant keys
    framed and, with ``method``, its selection on that head (`head_selection`: recomputed on the
    subject's q, k, v) tinted; and that selection (density, recall, output error)."""
    check_head(subject, layer, head, example)
    selection = None
    if method is not None:
        if not subject.live:
            raise ValueError(f"{subject.name} has no model: a sparse method cannot run on it")
        selection = head_selection(
            subject.cache[layer], method, example=example, head=head, block_size=block_size
        )
    rows = subject.trace.pattern_queries
    figure = pattern_figure(
        subject.trace,
        layer,
        head,
        example,
        tokens=None if subject.tokens is None else subject.tokens[example],
        relevant=None if subject.relevant is None else subject.relevant[example][rows],
        kept=None if selection is None else selection.kept[rows],
        method=None if method is None else sparse_label(method),
        window=window,
    )
    return figure, selection


def methods_panel(
    subject: AttentionSubject,
    methods: Sequence[SparseMethod],
    *,
    layers: Sequence[int] | None = None,
    block_size: int = 16,
    layout_layer: int | None = None,
    head: int = 0,
    example: int = 0,
) -> tuple[go.Figure, go.Figure, list[dict[str, Any]]]:
    """Fidelity of ``methods`` installed in the subject's model on its examples
    (`workbench.metrics.fidelity`: density vs recall, local and end-to-end output error), the
    layouts they select on one head (``layout_layer``, default the last of ``layers``; ``head``,
    ``example``), and one summary row per method."""
    if not subject.live or subject.model is None or subject.batch is None:
        raise ValueError(f"{subject.name} has no model: methods cannot run on it")
    if not methods:
        raise ValueError("methods must name at least one sparse method")
    batch = subject.batch
    scored = {"targets": batch.targets, "loss_mask": batch.loss_mask} if subject.token_task else {}
    reports = [
        fidelity(
            subject.model, batch.inputs, method, layers=layers, block_size=block_size, **scored
        ).to_dict()
        for method in methods
    ]
    layer = layout_layer if layout_layer is not None else max(layers or subject.trace.layers)
    check_head(subject, layer, head, example)
    capture = subject.cache[layer]
    kv_head = head * capture.k.shape[1] // capture.q.shape[1]
    q = capture.q[example : example + 1, head : head + 1]
    k = capture.k[example : example + 1, kv_head : kv_head + 1]
    layouts = methods_figure(
        list(methods),
        block_size=block_size,
        qk=(q, k),
        source=f"layer {layer} head {head}, example {example}",
    )
    rows = [
        {
            "method": sparse_label(method),
            "density": report["mean_density"],
            "recall": report["mean_recall"],
            "local error": report["mean_local_output_error"],
            "output error": report["output_error"],
            "KL": report["kl"],
            "accuracy delta": report["accuracy_delta"],
        }
        for method, report in zip(methods, reports, strict=True)
    ]
    title = f"fidelity on {subject.examples} examples ({subject.name})"
    return fidelity_figure(reports, title=title), layouts, rows


# ---------------------------------------------------------------------------- SAEs
def sae_summary_table(name: str, metadata: Mapping[str, Any]) -> go.Figure:
    """The SAE's evaluation metrics (``workbench.json``) as a table."""
    metrics = metadata.get("metrics") or {}
    rows = [
        {"metric": key, "value": value}
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ]
    return table_figure(rows, title=f"SAE {name}: layer {metadata.get('layer')}")


def sae_training_figure(name: str, metadata: Mapping[str, Any]) -> go.Figure | None:
    """The SAE's training curve (loss and MSE), None when it recorded none."""
    curve = metadata.get("loss_curve")
    return sae_loss_figure({name: curve}) if curve else None


def sae_feature_figures(view: SAEView) -> dict[str, go.Figure]:
    """Density of the features, attribution per head of the strongest ones and the task
    variables they match."""
    report = view.report
    strongest = report.strongest_features(STRONGEST_FEATURES).tolist()
    figures = {
        "density": feature_density_figure(report.frequency),
        "heads": head_attribution_figure(
            report.head_attribution, strongest, head_norms=report.head_norms
        ),
    }
    return figures | {
        f"variable {name}": variable_match_figure(match) for name, match in report.variables.items()
    }


def sae_examples_figure(view: SAEView, feature: int | None = None) -> go.Figure:
    """The top-activating examples of ``feature`` (default: the strongest feature)."""
    if feature is None:
        strongest = view.report.strongest_features(1).tolist()
        if not strongest:
            raise ValueError(f"no feature of {view.name} fires on the held-out examples")
        feature = strongest[0]
    return top_examples_figure(view.top_examples(feature), feature)
