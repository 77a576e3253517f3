"""Tools: fit, predict, compare arms and score, scanpy-style."""

from ._regions import compare_arms, evaluate, fit_regions, predict_regions, score_predictions

__all__ = ["compare_arms", "evaluate", "fit_regions", "predict_regions", "score_predictions"]
