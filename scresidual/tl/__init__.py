"""Tools: fit, predict, compare arms and suggest the next labels, scanpy-style.

Scores of predictions are in :mod:`scresidual.metrics`.
"""

from ._regions import compare_arms, fit_regions, predict_regions
from ._suggest import suggest_labels

__all__ = ["compare_arms", "fit_regions", "predict_regions", "suggest_labels"]
