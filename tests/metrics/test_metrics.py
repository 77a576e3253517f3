"""``sr.metrics``: scores of predicted labels."""

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import scresidual as sr
from scresidual import ScResidualError, metrics


def test_evaluate_scores_labelled_cells_only():
    truth = ["a", "a", "b", None, np.nan]
    pred = ["a", "b", "b", "a", "a"]
    scores = metrics.evaluate(truth, pred)
    assert scores["n_cells"] == 3
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    with pytest.raises(ScResidualError, match="no cell has a true label"):
        metrics.evaluate([None, np.nan], ["a", "b"])


def test_score_predictions_reads_the_prediction_column():
    a = AnnData(np.zeros((4, 1), np.float32))
    a.obs["region"] = pd.Categorical(["a", "b", "b", None])
    a.obs["train_pred"] = ["a", "b", "a", "a"]
    scores = metrics.score_predictions(a, truth_key="region", labels_key="train")
    assert (scores["n_cells"], scores["accuracy"]) == (3, pytest.approx(2 / 3))
    with pytest.raises(ScResidualError, match="region_pred"):
        metrics.score_predictions(a, truth_key="region")


def test_scores_live_in_metrics_not_tl():
    # the public names of sr.metrics are its scores, and they work from the package root
    assert sorted(sr.metrics.__all__) == [
        "evaluate",
        "expected_calibration_error",
        "score_predictions",
    ]
    assert sr.metrics.evaluate(["a", "b", "b"], ["a", "a", "b"])["n_cells"] == 3
    assert sr.metrics.evaluate.__module__ == "scresidual.metrics._scores"
    assert not hasattr(sr.tl, "evaluate") and not hasattr(sr.tl, "score_predictions")


def test_expected_calibration_error_is_the_gap_between_confidence_and_accuracy():
    proba = np.array([[0.9, 0.1]] * 10)
    y = np.array([0] * 6 + [1] * 4)  # confident at 0.9, right 60% of the time
    assert metrics.expected_calibration_error(proba, y) == pytest.approx(0.3)
    honest = np.array([[0.6, 0.4]] * 10)
    assert metrics.expected_calibration_error(honest, y) == pytest.approx(0.0)
