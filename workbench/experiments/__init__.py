"""Experiments: YAML specs (``experiments/*.yaml``) expanded into training runs, a runner that
caches runs by config hash, and per-experiment analyses."""

from workbench.experiments.runner import (
    AnalysisOutput,
    ExperimentResult,
    RunRecord,
    RunsFailed,
    analysis,
    run_experiment,
)
from workbench.experiments.spec import ExperimentSpec, config_hash, load_spec, spec_names

__all__ = [
    "AnalysisOutput",
    "ExperimentResult",
    "ExperimentSpec",
    "RunRecord",
    "RunsFailed",
    "analysis",
    "config_hash",
    "load_spec",
    "run_experiment",
    "spec_names",
]
