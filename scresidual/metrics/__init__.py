"""Metrics: how well predicted labels match the truth, scanpy-style (``sr.metrics``)."""

from ._scores import evaluate, score_predictions

__all__ = ["evaluate", "score_predictions"]
