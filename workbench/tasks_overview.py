"""An overview of the toy tasks (`workbench tasks overview`): sample every registered task,
summarise its ground-truth relevance, draw it.

Writes ``<out_dir>/summary.json``, one HTML figure per task under ``<out_dir>/figures/`` and an
``index.html`` holding all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

import toy_tasks
from toy_tasks import Batch, LinearRegressionICL, ToyTask
from toy_tasks.baselines import averaging_curve, knn_curve, least_squares_curve, ridge_curve
from workbench.io import atomic_write_json, atomic_write_text, write_figure
from workbench.viz.tasks import curves_figure, relevance_figure


def relevance_summary(batch: Batch) -> dict[str, float]:
    """How much of the causal context a perfect model must read, averaged over scored predictions.

    ``ideal_density`` is the mean over scored predictions at position i of
    (number of relevant positions) / (i + 1): the attention density an oracle needs.
    """
    scored = batch.loss_mask  # [batch, seq]
    n_relevant = (batch.relevant_positions >= 0).sum(-1).to(torch.float64)  # [batch, seq]
    causal_keys = torch.arange(1, batch.seq_len + 1, device=batch.device, dtype=torch.float64)
    return {
        "scored_fraction": scored.to(torch.float64).mean().item(),
        "relevant_per_prediction": n_relevant[scored].mean().item(),
        "ideal_density": (n_relevant / causal_keys)[scored].mean().item(),
    }


def baseline_curves(batch: Batch) -> dict[str, list[float]]:
    """Garg et al.'s baselines on a linear-regression batch: error / d vs in-context examples."""
    curves = {
        "least squares": least_squares_curve(batch),
        "ridge (alpha=0.1)": ridge_curve(batch, alpha=0.1),
        "3-NN": knn_curve(batch, k=3),
        "averaging": averaging_curve(batch),
    }
    return {name: curve.tolist() for name, curve in curves.items()}


def tasks_overview(
    out_dir: str | Path = "runs/tasks", *, seed: int = 0, batch_size: int = 256
) -> dict:
    """Sample each registered toy task with ``seed`` and write the summary and figures."""
    out_dir = Path(out_dir)
    summary: dict[str, Any] = {"seed": seed, "batch_size": batch_size, "tasks": {}}
    figures: dict[str, go.Figure] = {}
    for name in tqdm(toy_tasks.names(), desc="toy tasks"):
        task: ToyTask = toy_tasks.get(name)
        batch = task.sample(batch_size, torch.Generator().manual_seed(seed))
        summary["tasks"][name] = {
            "config": task.to_dict(),
            "seq_len": batch.seq_len,
            **relevance_summary(batch),
        }
        figures[f"{name}_relevance"] = relevance_figure(task, batch)
        if isinstance(task, LinearRegressionICL):
            curves = baseline_curves(batch)
            summary["tasks"][name]["baselines"] = curves
            figures[f"{name}_baselines"] = curves_figure(
                curves,
                title=f"Baselines on linear regression (d={task.d}): error / d",
                x_title="in-context examples",
                y_title="squared error / d",
                log_y=True,
            )
    for figure_name, figure in figures.items():
        write_figure(figure, out_dir / "figures" / f"{figure_name}.html")
    atomic_write_text(out_dir / "index.html", _index_html(figures))
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def _index_html(figures: dict[str, go.Figure]) -> str:
    """One page holding every figure (plotly.js embedded once, so it opens offline)."""
    parts = [
        figure.to_html(full_html=False, include_plotlyjs=(i == 0))
        for i, figure in enumerate(figures.values())
    ]
    body = "\n".join(f"<div>{part}</div>" for part in parts)
    head = "<head><meta charset='utf-8'><title>toy tasks</title></head>"
    return f"<html>{head}<body>{body}</body></html>\n"
