"""The analyses of the bundled experiments (``experiments/*.yaml``), registered by name.

They read the runs' configs (`workbench.train.TrainConfig` dicts: ``task`` as
``{name, <task parameters>}``, ``sparse`` (None = dense, else ``{method, hparams, ...}``), ``seed``) and
the runs' ``metrics.jsonl`` records (``step``, ``eval_loss``, ``eval_accuracy`` or ``eval_mse``, and
with the ``attention`` evaluation metric ``attention = {name: [layer][head]}``).
Options come from the spec's ``analysis`` mapping; unknown options raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workbench.analysis import compare_exponents, emergence_time, fit_power_law, threshold_time
from workbench.experiments.base import (
    AnalysisOutput,
    Headline,
    RunRecord,
    analysis,
    analysis_options,
)
from workbench.experiments.spec import ExperimentSpec, config_hash, get_path
from workbench.metrics.stability import ROW_STATISTICS, stability_series
from workbench.runs import attention_series, metric_series, sparse_setting
from workbench.viz.experiments import curves_figure, power_law_figure, table_figure
from workbench.viz.stability import stability_figures

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
    runs: list[RunRecord], key: str, group: Callable[[RunRecord], str], **layout: Any
) -> Any | None:
    """`curves_figure` of metric ``key`` of every run that logged it (None if none did)."""
    curves = {run.config_hash: metric_series(run.metrics(), key) for run in runs}
    curves = {name: curve for name, curve in curves.items() if curve[0].size}
    if not curves:
        return None
    groups = {run.config_hash: group(run) for run in runs}
    return curves_figure(curves, groups=groups, y_title=key, **layout)


def _figures(**figures: Any) -> dict[str, Any]:
    """The figures that are not None."""
    return {name: figure for name, figure in figures.items() if figure is not None}


def _relevant_mass_figure(runs: list[RunRecord], group: Callable[[RunRecord], str]) -> Any | None:
    """Per run and layer, the largest relevant mass over the heads against the step (None when
    no run logged attention metrics)."""
    curves, groups = {}, {}
    for run in runs:
        steps, values = attention_series(run.metrics(), "relevant_mass")  # [m, layers, heads]
        for layer in range(values.shape[1] if steps.size else 0):
            label = f"{run.config_hash} layer {layer}"
            curves[label] = (steps, values[:, layer].max(axis=-1))
            groups[label] = f"{group(run)} layer {layer}"
    if not curves:
        return None
    return curves_figure(
        curves, groups=groups, title="relevant mass (best head per layer)", y_title="mass"
    )


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
    rows = [_emergence_row(run, options) for run in runs]
    results: dict[str, Any] = {
        "runs": rows,
        **_emergence_fit(rows, PAPER_EXPONENTS[options["paper"]]),
    }

    def group(run: RunRecord) -> str:
        return _label(run.config, EMERGENCE_COVARIATES)

    figures = _figures(
        loss=_curve_figure(runs, options["loss_key"], group, title="test loss", log_y=True),
        relevant_mass=_relevant_mass_figure(runs, group),
        fit=emergence_fit_figure(rows, results.get("fit")),
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


def emergence_fit_figure(rows: list[dict[str, Any]], fit: Mapping[str, Any] | None) -> Any | None:
    """`power_law_figure` of an emergence analysis' ``results["runs"]`` rows and
    ``results["fit"]`` (None without a fit): emerged runs, censored runs as lower bounds."""
    if fit is None:
        return None
    points, times, censored = _fit_points(rows)
    covariates = {name: [row[name] for row in points] for name in fit["names"]}
    logs = np.log(np.array([covariates[name] for name in fit["names"]], dtype=np.float64)).T
    exponents = np.array([fit["exponents"][name] for name in fit["names"]])
    predicted = np.exp(fit["log_prefactor"] + logs @ exponents)
    return power_law_figure(
        covariates,
        times,
        predicted.tolist(),
        formula=fit["formula"],
        x_name="T" if "T" in covariates else fit["names"][0],
        censored=censored.tolist(),
    )


def _fit_points(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[float], np.ndarray]:
    """The rows that enter the emergence fit, their times and which are censored ``[n]`` bool: an
    emerged run at its emergence time, a run without one at its last logged step (it emerged
    later, if ever)."""
    points = [row for row in rows if row["emergence_time"] or row.get("last_step")]
    times = [row["emergence_time"] or row["last_step"] for row in points]
    return points, times, np.array([not row["emergence_time"] for row in points], dtype=bool)


def method_label(config: Mapping[str, Any]) -> str:
    """``"dense"`` or e.g. ``"top_k(k=5)"`` from a run config's ``sparse`` entry."""
    sparse = sparse_setting(config)
    if sparse is None:
        return "dense"
    hparams = sorted((sparse.get("hparams") or {}).items())
    return f"{sparse['method']}({', '.join(f'{key}={value}' for key, value in hparams)})"


@analysis("semantic_focus")
def semantic_focus_analysis(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """Per task and sparse method: steps to reach each accuracy in ``thresholds``
    (`threshold_time`), final accuracy, and the final value of every other metric starting with
    ``accuracy_key`` (e.g. ``eval_accuracy_train``: on the training set). Runs trained with the
    ``stability`` evaluation metric add the final softmax stability (`_stability_row`) and a summary per task
    and kind of attention (dense, input-dependent, input-agnostic). Figures: accuracy and loss
    curves per task and method, summary table, stability curves."""
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
        method = method_label(run.config)
        return f"{tasks[run.config_hash]}: {method}" if len(set(tasks.values())) > 1 else method

    figures = _figures(
        accuracy=_curve_figure(runs, key, group, title="held-out accuracy per task and method"),
        loss=_curve_figure(
            runs, "loss", group, title="training loss per task and method", log_y=True
        ),
        summary=table_figure(summary, title="semantic focus: per task and method")
        if summary
        else None,
    )
    figures |= stability_figures(
        {run.config_hash: run.metrics() for run in runs},
        {run.config_hash: group(run) for run in runs},
    )
    results = {"runs": rows, "methods": summary}
    if by_kind:
        results["stability_by_kind"] = by_kind
    headline = semantic_focus_headline(summary, key, options["thresholds"])
    return AnalysisOutput(results=results, figures=figures, headline=headline)


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
        for threshold in thresholds:
            median = row.get(f"median_steps_to_{threshold}")
            reached = f"{row.get(f'reached_{threshold}', 0)}/{row['runs']}"
            cells.append("-" if median is None else f"{median:.0f} ({reached})")
        cells.append(f"{row.get(f'mean_{key}', float('nan')):.3f}")
        if len(columns) > len(cells):
            cells.append(f"{row.get(train_key, float('nan')):.3f}")
        rows.append(cells)
    return Headline(
        "semantic focus: steps to accuracy and final accuracy per task and method",
        columns,
        rows,
        note="steps: median over the runs that reached the threshold (reached / runs)",
    )


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
        row[f"steps_to_{threshold:g}"] = (
            threshold_time(
                steps,
                accuracy,
                threshold,
                "above",
                smoothing=options["smoothing"],
                persist=options["persist"],
            )
            if steps.size
            else None
        )
    finals = {name for record in records for name in record if name.startswith(key)}
    for name in sorted(finals):
        values = metric_series(records, name)[1]
        row[name] = float(values[-1]) if values.size else None
    return row


def _summarise_by(
    rows: list[dict[str, Any]], by: Sequence[str], mean_keys: list[str]
) -> list[dict[str, Any]]:
    """Per combination of the values of ``by`` (row keys): the number of runs, the mean of
    ``mean_keys`` and, for each ``steps_to_*`` key, the median over the runs that reached it and
    their count."""
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
            entry[f"reached_{name[len('steps_to_') :]}"] = len(reached)
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
