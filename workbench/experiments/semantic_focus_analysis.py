"""The analysis of the ``semantic_focus`` experiment: the semantic-focus paper's evaluation
(arXiv 2506.14095; its public code rithram/spartan, ``trfigs.py`` and ``bounds-lhs.py``, read
there) of encoders trained with full and with sparse attention.

Per task and attention variant, over the seeds:

* curves per epoch (``step / steps_per_epoch``; an epoch is one pass over the fixed training set):
  the median and inter-quartile range of the training loss (``eval_loss_train``: the loss on the
  training set in evaluation mode, as spartan's ``tr-ce``) and of the held-out accuracy
  (``eval_accuracy``);
* epochs to ``accuracy`` (0.95) held-out accuracy: the first evaluated epoch at or above it
  (spartan's ``cvgiter`` counts from 0 at the first epoch, so it is one less); runs that never
  reach it are counted as not reached (and, for the speed-up, censored at one epoch past their
  last);
* the final held-out accuracy and training loss;
* the paper's stability quantities of the final evaluation (the ``focus`` evaluation metric:
  percentiles over every layer, head and row of the full attention's dispersion ``delta``, the
  selection's dispersion and separation ``Delta`` and the sink counts ``beta``) and, per sparse
  variant, spartan's two sufficient conditions: at the high percentiles ``q`` (75, 90, 95, 100) of
  the full-attention runs' ``delta`` and of the variant's dispersion and ``beta``, and the low
  percentile ``100 - q`` of its separation, ``c1 = delta_sparse / delta``, ``c2 = max(Delta,
  1e-9) / delta``, ``beta / k``, the two ratios of
  `workbench.metrics.stability.topk_stability_ratios` (each a condition when below 1), next to
  the paper's values for the tasks it reports.

The comparison with full attention (``compare``, default top-k with k = 5): the ratio of median
epochs to ``accuracy`` (full over the variant: > 1 means the variant converges faster) and the
difference of median final held-out accuracy, each with a bootstrap 95% interval over the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from workbench.experiments.base import (
    AnalysisOutput,
    Headline,
    RunRecord,
    analysis,
    analysis_options,
)
from workbench.experiments.spec import ExperimentSpec
from workbench.runs import metric_series, sparse_setting
from workbench.viz.experiments import table_figure
from workbench.viz.seed_bands import SeedBand, seed_band_figure
from workbench.viz.style import Style, method_style

FULL = "full"
"""Label of full (dense) attention, the paper's name for it."""
LOSS_KEY, ACCURACY_KEY = "eval_loss_train", "eval_accuracy"
LOSS_ROW, ACCURACY_ROW = "training loss", "held-out accuracy"
CONDITION_LEVELS = (75, 90, 95, 100)
"""Percentiles at which spartan's ``bounds-lhs.py`` evaluates the conditions."""
SEPARATION_FLOOR = 1e-9
"""spartan's floor of every percentile it reads (``get_stats``), which matters for ``Delta``."""
PAPER_K = 5
"""spartan divides ``beta`` by 5 (its ``NNZ``) in the sink ratio of the second condition."""
PAPER_FOCUS = {
    "listops": [[8.61, 18.5, 29.4, 87.8], [3.51, 6.74, 9.67, 28.2], [0.016, 0.005, 0.002, 1e-9],
                [1, 3, 15, 598]],
    "parity": [[8.30, 10.1, 11.2, 19.4], [2.31, 3.13, 3.78, 9.16], [0.062, 0.022, 0.011, 1e-6],
               [8, 13, 16, 33]],
    "even_pairs": [[2.03, 4.73, 9.44, 14.6], [1.03, 2.84, 5.50, 8.25],
                   [0.009, 0.003, 0.002, 3e-8], [6, 17, 26, 40]],
    "missing_duplicate": [[4.63, 9.25, 17.1, 23.9], [2.36, 4.25, 4.88, 10.5],
                          [0.018, 0.006, 0.003, 1e-7], [7, 15, 21, 40]],
}  # fmt: skip
"""The paper's stability quantities, as rithram/spartan's ``bounds-lhs.py`` records them ("Results
in the paper for reference"): per task, rows ``delta`` of full attention, ``delta`` and ``Delta``
of top-k (k = 5) and ``beta``, at the percentiles `CONDITION_LEVELS` (``Delta`` at 25, 10, 5, 0)."""
DEFAULTS: dict[str, Any] = {
    "accuracy": 0.95,
    "compare": "top_k(k=5)",
    "bootstrap": 2000,
    "bootstrap_seed": 0,
}


# ---------------------------------------------------------------------------- labels
def variant_label(config: Mapping[str, Any]) -> str:
    """``"full"``, ``"top_k(k=5)"``, ``"banded(k=5)+G1"`` (1 global token), ``"top_p(p=0.85)"``
    ... of a run config's ``sparse`` entry; ``" layers 0,1"`` is added where the method runs on
    some layers only."""
    sparse = sparse_setting(config)
    if sparse is None:
        return FULL
    hparams = dict(sparse.get("hparams") or {})
    tokens = hparams.pop("global_tokens", 0)
    hparams.pop("global_at", None)
    label = f"{sparse['method']}({', '.join(f'{k}={v}' for k, v in sorted(hparams.items()))})"
    if tokens:
        label += f"+G{tokens}"
    if sparse.get("layers") is not None:
        label += " layers " + ",".join(str(layer) for layer in sparse["layers"])
    return label


def variant_style(label: str) -> Style:
    """The colour of the variant's method (full attention: the dense colour); global tokens and
    the budget k as the dash."""
    style = method_style("dense" if label == FULL else label)
    dash = "dot" if "+G3" in label else "dash" if "+G1" in label else "solid"
    if "k=9" in label:
        dash = {"solid": "longdash", "dash": "dashdot", "dot": "longdashdot"}[dash]
    return style.replace(dash=dash)


def task_label(config: Mapping[str, Any]) -> str:
    """The task's name (its settings other than ``global_tokens``, which the variants set, are
    those of the spec)."""
    task = config["task"]
    return task["name"] if isinstance(task, Mapping) else str(task)


def steps_per_epoch(config: Mapping[str, Any]) -> int:
    """Optimisation steps in one epoch: ``train_samples // batch_size`` (with a fresh batch every
    step, ``eval_every`` steps count as an epoch)."""
    samples, batch = config.get("train_samples"), int(config.get("batch_size", 1))
    return samples // batch if samples else int(config.get("eval_every", 1))


# ---------------------------------------------------------------------------- per run
def run_row(run: RunRecord, accuracy: float) -> dict[str, Any]:
    """One run's summary: task, variant, seed, epochs to ``accuracy``, final values, the
    percentiles of the final focus quantities and its curves per epoch."""
    records = run.metrics()
    per_epoch = steps_per_epoch(run.config)
    steps, held_out = metric_series(records, ACCURACY_KEY)
    loss_steps, loss = metric_series(records, LOSS_KEY)
    epochs = steps / per_epoch
    reached = np.flatnonzero(held_out >= accuracy)
    focus = next(
        (record["focus_quantiles"] for record in reversed(records) if "focus_quantiles" in record),
        None,
    )
    return {
        "config_hash": run.config_hash,
        "task": task_label(run.config),
        "variant": variant_label(run.config),
        "seed": run.config.get("seed"),
        "k": ((sparse_setting(run.config) or {}).get("hparams") or {}).get("k"),
        "epochs": float(epochs[-1]) if epochs.size else 0.0,
        "epochs_to_accuracy": float(epochs[reached[0]]) if reached.size else None,
        "final_accuracy": float(held_out[-1]) if held_out.size else None,
        "final_training_loss": float(loss[-1]) if loss.size else None,
        "focus_quantiles": focus,
        "curves": {
            ACCURACY_ROW: [epochs.tolist(), held_out.tolist()],
            LOSS_ROW: [(loss_steps / per_epoch).tolist(), loss.tolist()],
        },
    }


# ---------------------------------------------------------------------------- over seeds
def quartiles(values: Sequence[float]) -> dict[str, float | None]:
    """``{"median", "q25", "q75"}`` of the values (None when there are none; inf allowed)."""
    kept = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not kept.size:
        return {"median": None, "q25": None, "q75": None}
    # inf as a huge stand-in, so that interpolating next to it gives inf (not inf - inf = nan):
    # quartiles interpolate with weights of at least 1/4, which keeps it above INF_CUT.
    levels = np.percentile(np.where(np.isinf(kept), INF_STAND_IN, kept), [25, 50, 75])
    q25, median, q75 = (np.inf if level >= INF_CUT else float(level) for level in levels)
    return {"median": median, "q25": q25, "q75": q75}


INF_STAND_IN, INF_CUT = 1e300, 1e299


def band(curves: Sequence[Sequence[Sequence[float]]]) -> SeedBand:
    """Median and IQR at every x that any of ``curves`` (``[[x...], [y...]]`` each) holds, over
    the curves that hold it."""
    at: dict[float, list[float]] = {}
    for x, y in curves:
        for xi, yi in zip(x, y, strict=True):
            at.setdefault(round(float(xi), 6), []).append(float(yi))
    xs = sorted(at)
    levels = [np.percentile(at[x], [50, 25, 75]) for x in xs]
    return SeedBand(
        x=xs,
        median=[float(level[0]) for level in levels],
        low=[float(level[1]) for level in levels],
        high=[float(level[2]) for level in levels],
        runs=[len(at[x]) for x in xs],
    )


def censored_epochs(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Epochs to the accuracy of each run, a run that never reached it at one epoch past its last
    (a lower bound)."""
    return np.array(
        [
            row["epochs_to_accuracy"]
            if row["epochs_to_accuracy"] is not None
            else row["epochs"] + 1
            for row in rows
        ],
        dtype=np.float64,
    )


def _uncensored(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Epochs to the accuracy of each run, inf for a run that never reached it."""
    return [np.inf if r["epochs_to_accuracy"] is None else r["epochs_to_accuracy"] for r in rows]


def group_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Quartiles over the runs of one task and variant; ``focus``: the median over the runs of
    each percentile of each focus quantity."""
    reached = [row["epochs_to_accuracy"] for row in rows if row["epochs_to_accuracy"] is not None]
    summary: dict[str, Any] = {
        "task": rows[0]["task"],
        "variant": rows[0]["variant"],
        "runs": len(rows),
        "seeds": [row["seed"] for row in rows],
        "reached": len(reached),
        "epochs_to_accuracy": quartiles(_uncensored(rows)),
        "final_accuracy": quartiles([row["final_accuracy"] for row in rows]),
        "final_training_loss": quartiles([row["final_training_loss"] for row in rows]),
        "epochs": quartiles([row["epochs"] for row in rows]),
    }
    focus_runs = [row["focus_quantiles"] for row in rows if row["focus_quantiles"]]
    if focus_runs:
        summary["focus"] = {
            statistic: {
                level: _median([run[statistic].get(level) for run in focus_runs])
                for level in focus_runs[0][statistic]
            }
            for statistic in focus_runs[0]
        }
    return summary


def _median(values: Sequence[float | None]) -> float | None:
    kept = [value for value in values if value is not None]
    return float(np.median(kept)) if kept else None


def bootstrap_comparison(
    full: Sequence[Mapping[str, Any]],
    other: Sequence[Mapping[str, Any]],
    samples: int,
    seed: int,
) -> dict[str, Any]:
    """Full attention against a variant: ``speedup`` = median epochs to the accuracy of full over
    the variant's (censored runs at one epoch past their last: a lower bound when full's median
    is censored, an upper bound when the variant's is) and ``accuracy_gain`` = the variant's
    median final held-out accuracy minus full's, each with a percentile bootstrap 95% interval
    (runs resampled with replacement within each group, ``samples`` times)."""
    generator = np.random.default_rng(seed)
    full_epochs, other_epochs = censored_epochs(full), censored_epochs(other)
    full_acc = np.array([row["final_accuracy"] for row in full], dtype=np.float64)
    other_acc = np.array([row["final_accuracy"] for row in other], dtype=np.float64)

    def resampled(values: np.ndarray) -> np.ndarray:  # [samples] medians
        picks = generator.integers(0, values.size, size=(samples, values.size))
        return np.median(values[picks], axis=1)

    speedups = resampled(full_epochs) / resampled(other_epochs)
    gains = resampled(other_acc) - resampled(full_acc)
    full_median = quartiles(_uncensored(full))["median"]
    other_median = quartiles(_uncensored(other))["median"]
    return {
        "speedup": float(np.median(full_epochs) / np.median(other_epochs)),
        "speedup_interval": [float(v) for v in np.percentile(speedups, [2.5, 97.5])],
        "speedup_bound": "lower"
        if full_median == np.inf and other_median != np.inf
        else "upper"
        if other_median == np.inf and full_median != np.inf
        else "none"
        if full_median == np.inf
        else None,
        "accuracy_gain": float(np.median(other_acc) - np.median(full_acc)),
        "accuracy_gain_interval": [float(v) for v in np.percentile(gains, [2.5, 97.5])],
        "samples": samples,
    }


# ---------------------------------------------------------------------------- stability
def condition_ratios(
    delta_full: Sequence[float],
    delta_sparse: Sequence[float],
    separation: Sequence[float],
    beta: Sequence[float],
    k: int = PAPER_K,
) -> dict[str, list[float]]:
    """spartan's ``get_ratios``: per percentile level, ``c1``, ``c2``, ``beta / k`` and the two
    ratios (`topk_stability_ratios`; a sufficient condition holds where a ratio is below 1).
    Inputs are the values at the levels `CONDITION_LEVELS` (``separation`` at the reversed
    levels), each floored at `SEPARATION_FLOOR` as spartan reads them."""
    from workbench.metrics.stability import topk_stability_ratios

    floor = SEPARATION_FLOOR
    d = np.maximum(np.asarray(delta_full, dtype=np.float64), floor)
    c1 = np.maximum(np.asarray(delta_sparse, dtype=np.float64), floor) / d
    c2 = np.maximum(np.asarray(separation, dtype=np.float64), floor) / d
    sink = np.maximum(np.asarray(beta, dtype=np.float64), floor) / k
    ratios = topk_stability_ratios(d, c1, c2, sink)
    return {
        "c1": c1.tolist(),
        "c2": c2.tolist(),
        "sink_ratio": sink.tolist(),
        "w": ratios["w"].tolist(),
        "x": ratios["x"].tolist(),
    }


def stability_rows(summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per task and sparse variant with focus quantities: the values at `CONDITION_LEVELS` and
    `condition_ratios` against the task's full-attention runs; and per task the paper's
    (`PAPER_FOCUS`) where it reports them."""
    rows = []
    by_task: dict[str, dict[str, Mapping[str, Any]]] = {}
    for summary in summaries:
        by_task.setdefault(summary["task"], {})[summary["variant"]] = summary
    for task, variants in by_task.items():
        full = variants.get(FULL, {}).get("focus")
        if task in PAPER_FOCUS:
            d, ds, sep, beta = PAPER_FOCUS[task]
            rows.append(_stability_row(task, "top_k(k=5)", "paper", d, ds, sep, beta, PAPER_K))
        if full is None:
            continue
        delta = [full["delta_full"][f"q{level}"] for level in CONDITION_LEVELS]
        for variant, summary in variants.items():
            focus = summary.get("focus")
            if variant == FULL or focus is None or None in delta:
                continue
            values = [
                [focus["delta_sparse"][f"q{level}"] for level in CONDITION_LEVELS],
                [focus["separation"][f"q{100 - level}"] for level in CONDITION_LEVELS],
                [focus["beta"][f"q{level}"] for level in CONDITION_LEVELS],
            ]
            if any(value is None for values_ in values for value in values_):
                continue
            rows.append(_stability_row(task, variant, "ours", delta, *values, PAPER_K))
    return rows


def _stability_row(
    task: str,
    variant: str,
    source: str,
    delta: Sequence[float],
    delta_sparse: Sequence[float],
    separation: Sequence[float],
    beta: Sequence[float],
    k: int,
) -> dict[str, Any]:
    ratios = condition_ratios(delta, delta_sparse, separation, beta, k)
    return {
        "task": task,
        "variant": variant,
        "source": source,
        "levels": list(CONDITION_LEVELS),
        "delta_full": list(map(float, delta)),
        "delta_sparse": list(map(float, delta_sparse)),
        "separation": list(map(float, separation)),
        "beta": list(map(float, beta)),
        **ratios,
        "w_holds": [value < 1 for value in ratios["w"]],
        "x_holds": [value < 1 for value in ratios["x"]],
    }


# ---------------------------------------------------------------------------- the analysis
@analysis("semantic_focus")
def semantic_focus_analysis(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """See the module docstring. Options: ``accuracy`` (the convergence level, 0.95),
    ``compare`` (the variant compared with full attention in the headline, ``"top_k(k=5)"``),
    ``bootstrap`` (resamples) and ``bootstrap_seed``."""
    options = analysis_options(spec, DEFAULTS)
    accuracy = options["accuracy"]
    if not 0 < accuracy <= 1:
        raise ValueError(f"analysis.accuracy must be in (0, 1], got {accuracy!r}")
    rows = [run_row(run, accuracy) for run in runs]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["variant"]), []).append(row)
    summaries = [group_summary(group) for group in groups.values()]
    comparisons = []
    for (task, variant), group in groups.items():
        full = groups.get((task, FULL))
        if variant != FULL and full:
            comparison = bootstrap_comparison(
                full, group, options["bootstrap"], options["bootstrap_seed"]
            )
            comparisons.append({"task": task, "variant": variant, **comparison})
    stability = stability_rows(summaries)
    results: dict[str, Any] = {
        "accuracy": accuracy,
        "runs": [{k: v for k, v in row.items() if k != "curves"} for row in rows],
        "variants": summaries,
        "comparisons": comparisons,
        "stability": stability,
    }
    figures = _figures(rows, summaries, comparisons, stability, accuracy)
    headline = semantic_focus_headline(summaries, comparisons, accuracy, options["compare"])
    return AnalysisOutput(results=finite(results), figures=figures, headline=headline)


def finite(value: Any) -> Any:
    """``value`` with every infinite or NaN float replaced by None (strict JSON; in the epochs
    to the accuracy, None is "not reached")."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def _figures(
    rows: Sequence[Mapping[str, Any]],
    summaries: Sequence[Mapping[str, Any]],
    comparisons: Sequence[Mapping[str, Any]],
    stability: Sequence[Mapping[str, Any]],
    accuracy: float,
) -> dict[str, Any]:
    """``curves`` (per budget k: ``curves_k5``, ... when there are several): training loss above
    held-out accuracy per task, full and the variants with that k (and those without one);
    ``summary``, ``comparison`` and ``stability`` tables."""
    budgets = sorted({row["k"] for row in rows if row["k"] is not None})
    figures: dict[str, Any] = {}
    for budget in budgets or [None]:
        chosen = [row for row in rows if row["k"] in (budget, None)]
        panels: dict[str, dict[str, dict[str, SeedBand]]] = {}
        for (task, variant), group in _grouped(chosen).items():
            for metric in (LOSS_ROW, ACCURACY_ROW):
                panels.setdefault(task, {}).setdefault(metric, {})[variant] = band(
                    [row["curves"][metric] for row in group]
                )
        name = "curves" if len(budgets) <= 1 else f"curves_k{budget}"
        label = "" if budget is None else f", k = {budget}"
        figures[name] = seed_band_figure(
            panels,
            title=f"semantic focus: median and IQR over seeds per epoch{label}",
            rows=[LOSS_ROW, ACCURACY_ROW],
            log_y=[LOSS_ROW],
            styles={variant: variant_style(variant) for (_, variant) in _grouped(chosen)},
        )
    if summaries:
        figures["summary"] = table_figure(
            [_summary_cells(summary, accuracy) for summary in summaries],
            title="semantic focus: per task and attention variant (median [IQR] over seeds)",
        )
    if comparisons:
        figures["comparison"] = table_figure(
            [_comparison_cells(comparison) for comparison in comparisons],
            title="against full attention (bootstrap 95% intervals over seeds)",
        )
    if stability:
        figures["stability"] = table_figure(
            [_stability_cells(row) for row in stability],
            title="stability quantities at the 75 / 90 / 95 / 100th percentiles and the "
            "sufficient conditions (ratio < 1)",
        )
    return figures


def _grouped(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["variant"]), []).append(row)
    return groups


def _quartile_cell(values: Mapping[str, float | None], digits: int = 3) -> str:
    if values["median"] is None:
        return "–"
    if values["median"] == np.inf:
        return "not reached"

    def number(value: float | None) -> str:
        return "inf" if value == np.inf else f"{value:.{digits}f}"

    return f"{number(values['median'])} [{number(values['q25'])}, {number(values['q75'])}]"


def _summary_cells(summary: Mapping[str, Any], accuracy: float) -> dict[str, Any]:
    return {
        "task": summary["task"],
        "variant": summary["variant"],
        "runs": summary["runs"],
        f"epochs to {accuracy:g} held-out accuracy": _epochs_cell(summary),
        "final held-out accuracy": _quartile_cell(summary["final_accuracy"]),
        "final training loss": _quartile_cell(summary["final_training_loss"], 4),
        "epochs trained": _quartile_cell(summary["epochs"], 0),
    }


def _epochs_cell(summary: Mapping[str, Any]) -> str:
    """Median [IQR] epochs to the accuracy, how many runs reached it and within how many
    epochs (the median run's length: a sweep stopped early says so here). Read back from
    ``results.json``, a run that never reached it is ``None`` (strict JSON has no infinity)."""
    epochs = {
        key: np.inf if value is None else value
        for key, value in summary["epochs_to_accuracy"].items()
    }
    cell = _quartile_cell(epochs, 1)
    trained = summary["epochs"]["median"]
    return f"{cell} ({summary['reached']}/{summary['runs']} reached within {trained:g} epochs)"


def _interval(values: Sequence[float], digits: int = 2) -> str:
    return f"[{values[0]:.{digits}f}, {values[1]:.{digits}f}]"


def _comparison_cells(comparison: Mapping[str, Any]) -> dict[str, Any]:
    bound = {"lower": ">= ", "upper": "<= ", "none": "n/a (neither reached) "}.get(
        comparison["speedup_bound"], ""
    )
    return {
        "task": comparison["task"],
        "variant": comparison["variant"],
        "speed-up (full / variant epochs)": f"{bound}{comparison['speedup']:.2f} "
        f"{_interval(comparison['speedup_interval'])}",
        "held-out accuracy gain": f"{comparison['accuracy_gain']:+.3f} "
        f"{_interval(comparison['accuracy_gain_interval'], 3)}",
    }


def _stability_cells(row: Mapping[str, Any]) -> dict[str, Any]:
    def values(name: str, digits: int = 3) -> str:
        return " / ".join(f"{value:.{digits}g}" for value in row[name])

    return {
        "task": row["task"],
        "variant": row["variant"],
        "source": row["source"],
        "delta (full)": values("delta_full"),
        "delta (variant)": values("delta_sparse"),
        "Delta (25/10/5/0th)": values("separation"),
        "beta": values("beta"),
        "ratio w": values("w"),
        "ratio x": values("x"),
    }


def semantic_focus_headline(
    summaries: Sequence[Mapping[str, Any]],
    comparisons: Sequence[Mapping[str, Any]],
    accuracy: float,
    compare: str | None,
) -> Headline:
    """Per task: full attention and the ``compare`` variant (every variant when ``None``):
    median [IQR] epochs to ``accuracy``, final held-out accuracy, the speed-up and the
    accuracy gain with their bootstrap intervals."""
    chosen = {(c["task"], c["variant"]): c for c in comparisons}
    rows = []
    for summary in summaries:
        if compare is not None and summary["variant"] not in (FULL, compare):
            continue
        comparison = chosen.get((summary["task"], summary["variant"]))
        cells = _comparison_cells(comparison) if comparison else {}
        rows.append(
            [
                summary["task"],
                summary["variant"],
                _epochs_cell(summary),
                _quartile_cell(summary["final_accuracy"]),
                cells.get("speed-up (full / variant epochs)", ""),
                cells.get("held-out accuracy gain", ""),
            ]
        )
    return Headline(
        f"semantic focus: full attention against {compare or 'every variant'}",
        [
            "task",
            "variant",
            f"epochs to {accuracy:g} accuracy",
            "final held-out accuracy",
            "speed-up",
            "accuracy gain",
        ],
        rows,
        note="median [IQR] over seeds; intervals: bootstrap 95% over seeds; runs that never "
        "reached the accuracy count one epoch past their last (so a speed-up is then a bound)",
    )
