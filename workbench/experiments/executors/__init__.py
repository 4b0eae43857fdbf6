"""Executors: where the runs of a sweep train. ``process`` (the default: this process, or
``workers`` local processes) needs nothing extra; ``ray`` (Ray tasks on a local or existing
cluster) needs the optional extra ``ray``. Both go through the same sweep loop
(`workbench.experiments.executors.base.run_sweep`) and write the same run folders, keyed by
config hash: the only cache, whichever executor trained a run."""

from workbench.experiments.executors.base import RunsFailed, TrainFn, run_config

EXECUTORS = ("process", "ray")
"""The executor names `workbench.experiments.run_experiment` and ``workbench run`` take."""

__all__ = ["EXECUTORS", "RunsFailed", "TrainFn", "run_config"]
