"""Tools: fit, predict, compare arms, score and suggest the next labels, scanpy-style."""

from ._regions import compare_arms, evaluate, fit_regions, predict_regions, score_predictions
from ._suggest import suggest_labels

__all__ = ["compare_arms", "evaluate", "fit_regions", "predict_regions", "score_predictions",
           "suggest_labels"]
