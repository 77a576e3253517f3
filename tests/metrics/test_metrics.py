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
    assert sr.metrics is metrics
    assert not hasattr(sr.tl, "evaluate") and not hasattr(sr.tl, "score_predictions")
