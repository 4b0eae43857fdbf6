"""Toy-task generators with ground-truth relevance: which positions a perfect model must read.

A task is one module of this package holding a frozen dataclass config decorated with
`register_task` (see `toy_tasks.registry`). Importing the package imports each of its modules, in
sorted order, so that their tasks register; ``names()`` is sorted whatever the order.
"""

import importlib
import pkgutil

from toy_tasks.assoc_recall import AssociativeRecall
from toy_tasks.base import IGNORE_INDEX, NO_POSITION, Batch, ToyTask
from toy_tasks.emergence import SingleLocationRegression
from toy_tasks.in_context_recall import InContextRecall
from toy_tasks.joint_recall import JointRecall
from toy_tasks.linear_regression import Curriculum, LinearRegressionICL, Schedule
from toy_tasks.registry import describe, get, names, register_task, task_class

for _module in sorted(module.name for module in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "IGNORE_INDEX",
    "NO_POSITION",
    "AssociativeRecall",
    "Batch",
    "Curriculum",
    "InContextRecall",
    "JointRecall",
    "LinearRegressionICL",
    "Schedule",
    "SingleLocationRegression",
    "ToyTask",
    "describe",
    "get",
    "names",
    "register_task",
    "task_class",
]
