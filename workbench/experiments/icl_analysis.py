"""The analysis of the ``icl_linreg`` experiment: Garg et al.'s evaluation of in-context linear
regression ("What can transformers learn in-context?", arXiv 2208.01066), squared error / d of
the prediction of ``y_{k+1}`` against the number ``k`` of in-context examples, for every trained
model beside Garg's baselines (least squares, 3-NN, averaging) and Akyurek et al.'s (ridge, steps
of gradient descent), and the paper-versus-ours rows at ``k = d`` and ``k = 2d``.

Garg et al. (Fig. 2, d = 20, noiseless): the trained transformer tracks least squares, whose error
is 0 from ``k = d`` on; the row of a model at ``k`` reproduces it when the upper end of its 95%
interval is at most ``near_zero`` (an option, 0.05: 5% of the zero predictor's error 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from workbench.experiments.base import AnalysisOutput, RunRecord, analysis, analysis_options
from workbench.experiments.curves import (
    config_label,
    curve_figure,
    present_figures,
    task_settings,
)
from workbench.experiments.reproduction import (
    reproduction_headline,
    value_row,
)
from workbench.experiments.spec import ExperimentSpec, config_hash
from workbench.viz.experiments import curves_figure
from workbench.viz.style import task_style

ICL_OPTIONS = {
    "eval_examples": 1024,
    "eval_seed": 12345,
    "ridge_alpha": 0.1,
    "knn_k": 3,
    "gd_steps": [1, 10],
    "near_zero": 0.05,
}
PAPER_NOTE = "Garg et al. Fig. 2: the transformer tracks least squares, 0 from k = d"


def load_model(run_dir: Path) -> Any:
    """The trained model of a finished run, in eval mode, from its final checkpoint:
    `workbench.train.load_model` (on CPU). Contract: a ``torch.nn.Module`` mapping inputs
    ``[batch, seq_len, d_input]`` to outputs ``[batch, seq_len, d_output]``."""
    from workbench.train import load_model as load_checkpoint

    model, _, _ = load_checkpoint(run_dir)
    return model


@analysis("icl_linreg")
def icl_linreg_analysis(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """Garg et al.'s evaluation on ``eval_examples`` prompts (seed ``eval_seed``): every model's
    error curve next to least squares, ridge (``ridge_alpha``), ``gd_steps`` steps of gradient
    descent (`toy_tasks.baselines.gradient_descent_predictor`), ``knn_k``-nearest neighbours and
    averaging; ``paper_vs_ours`` at k = d and 2d. Figures: Garg's plot per task config (squared
    error / d against k), test loss."""
    options = analysis_options(spec, ICL_OPTIONS)
    results = icl_error_curves(runs, options, load_model)
    results["paper_vs_ours"] = icl_reproduction(results, options["near_zero"])
    figures = {
        f"error_curves_{name}": curves_figure(
            {label: (range(len(curve)), curve) for label, curve in curves.items()},
            title=f"in-context regression, {name} (Garg et al.'s figure)",
            x_title="in-context examples k",
            y_title="squared error / d",
            groups={label: curve_group(label) for label in curves},
        )
        for name, curves in results["curves"].items()
    }
    loss = curve_figure(
        runs,
        "eval_loss",
        lambda run: config_label(run.config, {"task": "task.name"}),
        lambda run: task_style(task_settings(run.config["task"])["name"]),
        title="test loss",
        log_y=True,
    )
    headline = reproduction_headline(
        "in-context regression: squared error / d at k = d and 2d (95% intervals over prompts)",
        results["paper_vs_ours"],
        f"{PAPER_NOTE}; a model reproduces it when its interval ends below "
        f"{options['near_zero']:g}",
    )
    return AnalysisOutput(
        results=results, figures={**figures, **present_figures(loss=loss)}, headline=headline
    )


def curve_group(label: str) -> str:
    """The legend entry of an error curve: ``"model"`` for every seed's model, else the label
    (each baseline, e.g. ``"gd steps=1"`` and ``"gd steps=10"``, its own)."""
    return "model" if label.startswith("model ") else label


def icl_reproduction(results: Mapping[str, Any], near_zero: float) -> list[dict[str, Any]]:
    """Per task config, at k = d and k = 2d: each model's error with its interval (paper 0), and
    each baseline's (no paper number)."""
    rows = []
    for name, task_curves in results["curves"].items():
        d = results["dimensions"][name]
        intervals = results["intervals"][name]
        for k in (d, 2 * d):
            for label, curve in task_curves.items():
                if k >= len(curve):
                    continue
                quantity = f"{name} {label}: error at k={k}"
                if label in intervals:
                    low, high = intervals[label][k]
                    row = value_row(quantity, 0.0, curve[k], low, high, PAPER_NOTE)
                    row["reproduces"] = bool(high <= near_zero)
                else:
                    row = value_row(quantity, None, curve[k], note="baseline")
                rows.append(row)
    return rows


def icl_error_curves(
    runs: list[RunRecord], options: Mapping[str, Any], load: Callable[[Path], Any]
) -> dict[str, Any]:
    """``{"curves": {task label: {curve label: [n_points] errors}}, "intervals": {task label:
    {model label: [n_points] (low, high)}}, "dimensions": {task label: d}}``: each run's model
    (loaded by ``load(run_dir)``) as ``"model seed=<s>"`` with 95% intervals over the prompts,
    and the baselines, per distinct task config."""
    import torch

    import toy_tasks
    from toy_tasks import baselines

    curves: dict[str, dict[str, list[float]]] = {}
    intervals: dict[str, dict[str, list[tuple[float, float]]]] = {}
    dimensions: dict[str, int] = {}
    for run in runs:
        task = toy_tasks.get(**run.config["task"])
        name = f"d{task.d}_n{task.n_points}_{config_hash(task.to_dict())[:6]}"
        batch = task.sample(
            options["eval_examples"], torch.Generator().manual_seed(options["eval_seed"])
        )
        if name not in curves:
            curves[name] = baseline_curves(batch, options)
            intervals[name], dimensions[name] = {}, task.d
        model = load(run.directory)
        device = next(model.parameters()).device
        with torch.no_grad():
            outputs = model(batch.inputs.to(device)).cpu()
        predictions = outputs[:, 0::2, 0].to(torch.float64)
        label = f"model seed={run.config.get('seed')}"
        curves[name][label] = baselines.error_curve(batch, predictions).tolist()
        _, y = baselines.regression_data(batch)
        intervals[name][label] = mean_intervals((predictions - y).square().numpy() / task.d)
    return {"curves": curves, "intervals": intervals, "dimensions": dimensions}


def baseline_curves(batch: Any, options: Mapping[str, Any]) -> dict[str, list[float]]:
    """The error curves of the baselines on ``batch``: Garg's and Akyurek's."""
    from toy_tasks import baselines

    curves = {
        "least_squares": baselines.least_squares_curve(batch).tolist(),
        f"ridge alpha={options['ridge_alpha']}": baselines.ridge_curve(
            batch, options["ridge_alpha"]
        ).tolist(),
    }
    for steps in options["gd_steps"]:
        label = f"gd steps={steps}"
        curves[label] = baselines.gradient_descent_curve(batch, steps).tolist()
    curves[f"{options['knn_k']}-NN"] = baselines.knn_curve(batch, options["knn_k"]).tolist()
    curves["averaging"] = baselines.averaging_curve(batch).tolist()
    return curves


def mean_intervals(errors: np.ndarray, confidence: float = 0.95) -> list[tuple[float, float]]:
    """Per column of ``errors [prompts, k]``: the t-interval of the mean."""
    from scipy import stats

    n = errors.shape[0]
    mean, spread = errors.mean(axis=0), errors.std(axis=0, ddof=1) / math.sqrt(n)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * spread
    return [(float(m - h), float(m + h)) for m, h in zip(mean, half, strict=True)]
