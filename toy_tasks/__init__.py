"""Toy-task generators with ground-truth relevance: which positions a perfect model must read."""

from toy_tasks.assoc_recall import AssociativeRecall
from toy_tasks.base import IGNORE_INDEX, NO_POSITION, Batch, ToyTask
from toy_tasks.emergence import SingleLocationRegression
from toy_tasks.joint_recall import JointRecall
from toy_tasks.linear_regression import Curriculum, LinearRegressionICL, Schedule
from toy_tasks.registry import get, names, register, task_class

__all__ = [
    "IGNORE_INDEX",
    "NO_POSITION",
    "AssociativeRecall",
    "Batch",
    "Curriculum",
    "JointRecall",
    "LinearRegressionICL",
    "Schedule",
    "SingleLocationRegression",
    "ToyTask",
    "get",
    "names",
    "register",
    "task_class",
]
