"""Experiments: YAML specs (``experiments/*.yaml``) expanded into training runs, a runner that
caches runs by config hash, and per-experiment analyses (the bundled ones register here)."""

from workbench.experiments import (  # noqa: F401  (register the analyses)
    analyses,
    sae_analysis,
    semantic_focus_analysis,
)
from workbench.experiments.base import AnalysisOutput, Headline, RunRecord, analysis, get_analysis
from workbench.experiments.runner import ExperimentResult, RunsFailed, run_experiment
from workbench.experiments.spec import ExperimentSpec, config_hash, load_spec, spec_names

__all__ = [
    "AnalysisOutput",
    "ExperimentResult",
    "ExperimentSpec",
    "Headline",
    "RunRecord",
    "RunsFailed",
    "analysis",
    "config_hash",
    "get_analysis",
    "load_spec",
    "run_experiment",
    "spec_names",
]
