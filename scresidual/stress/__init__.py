"""Stress tests: corrupt or swap the source, compare REFINE with its baselines."""

from .._task import StressTask, split_indices
from .._validate import check_labels
from ._cli import main_stress_test, run
from ._corruptions import (
    IMBALANCE,
    confuse_classes,
    domain_mismatch,
    flip_labels,
    imbalance_indices,
)
from ._protocol import SETTINGS, corrupt_source, results_table, run_task, score

__all__ = [
    "IMBALANCE",
    "SETTINGS",
    "StressTask",
    "check_labels",
    "confuse_classes",
    "corrupt_source",
    "domain_mismatch",
    "flip_labels",
    "imbalance_indices",
    "main_stress_test",
    "results_table",
    "run",
    "run_task",
    "score",
    "split_indices",
]
