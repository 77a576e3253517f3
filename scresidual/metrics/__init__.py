"""Metrics: how well predicted labels match the truth, scanpy-style (``sr.metrics``)."""

from ._scores import evaluate, expected_calibration_error, score_predictions

__all__ = ["evaluate", "expected_calibration_error", "score_predictions"]
