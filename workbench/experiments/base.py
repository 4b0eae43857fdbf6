"""What the experiment runner and the analyses share: the record of a run, the output of an
analysis and the registry of analyses (`analysis` decorator, `get_analysis`).

An analysis is registered under its experiment's name by decorating a function
``analysis_fn(spec, runs) -> AnalysisOutput`` with ``@analysis("name")``; the bundled ones live in
`workbench.experiments.analyses`, which `workbench.experiments` imports. Experiments without an
analysis get `summarise_runs`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.experiments.spec import ExperimentSpec
from workbench.runs import Run


@dataclass(frozen=True)
class RunRecord:
    """One trained run of an experiment.

    Attributes:
        config: the run's nested config dict (with ``seed``).
        run: its folder in the run store (named by `config_hash` of ``config``).
        cached: True when the run was reused instead of trained.
        finished: False for a run analysed from the logged part of an unfinished training
            (`run_experiment` with ``train=False``).
    """

    config: dict[str, Any]
    run: Run
    cached: bool
    finished: bool = True

    @property
    def config_hash(self) -> str:
        return self.run.name

    @property
    def directory(self) -> Path:
        return self.run.path

    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (empty when the run logged none)."""
        return self.run.metrics()

    def result(self) -> dict[str, Any]:
        """The run's ``results.json``."""
        return self.run.result()


@dataclass(frozen=True)
class Headline:
    """The result a reader looks at first, as a table of text cells: ``workbench run`` prints it
    and the analysis's ``results.json`` stores it under ``headline``."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "note": self.note}


@dataclass(frozen=True)
class AnalysisOutput:
    """What an experiment's analysis returns: JSON-ready ``results``, named plotly figures
    (written to ``figures/<name>.html``) and the `Headline` (None: nothing to print)."""

    results: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    headline: Headline | None = None


def analysis_options(spec: ExperimentSpec, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by ``spec.analysis``; unknown options raise ``ValueError``."""
    unknown = set(spec.analysis) - set(defaults)
    if unknown:
        raise ValueError(
            f"{spec.name}: unknown analysis options {sorted(unknown)} (known: {sorted(defaults)})"
        )
    return {**defaults, **spec.analysis}


AnalysisFn = Callable[[ExperimentSpec, list[RunRecord]], AnalysisOutput]
"""``analysis_fn(spec, runs)``; options come from ``spec.analysis``."""

_ANALYSES: dict[str, AnalysisFn] = {}


def analysis(name: str) -> Callable[[AnalysisFn], AnalysisFn]:
    """Decorator registering the analysis of the experiment ``name``."""

    def register(function: AnalysisFn) -> AnalysisFn:
        if name in _ANALYSES:
            raise ValueError(f"an analysis for experiment {name!r} is already registered")
        _ANALYSES[name] = function
        return function

    return register


def get_analysis(name: str) -> AnalysisFn:
    """The analysis registered for experiment ``name`` (`summarise_runs` when there is none)."""
    return _ANALYSES.get(name, summarise_runs)


def summarise_runs(spec: ExperimentSpec, runs: list[RunRecord]) -> AnalysisOutput:
    """The fallback analysis: the last metrics record of every run."""
    last = {run.config_hash: (run.metrics() or [None])[-1] for run in runs}
    return AnalysisOutput(results={"final_metrics": last})
