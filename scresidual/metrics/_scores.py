"""Accuracy and macro-F1 of predicted labels (over the cells with a true label), and ECE."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from sklearn.metrics import accuracy_score, f1_score

from .._constants import pred_key
from .._errors import ScResidualError
from .._validate import check_obs_key, labelled_mask


def evaluate(y_true, y_pred) -> dict[str, float]:
    """Accuracy and macro-F1 over the cells that have a true label.

    Parameters
    ----------
    y_true
        True labels; missing values (``None``, NaN) mark unlabelled cells, left out.
    y_pred
        Predicted labels, one per cell.

    Returns
    -------
    ``{"accuracy": …, "macro_f1": …, "n_cells": …}``, ``n_cells`` the number scored.

    """
    y_true = np.asarray(y_true, dtype=object)
    mask = labelled_mask(y_true)
    if not mask.any():
        raise ScResidualError("no cell has a true label to evaluate against.")
    t = y_true[mask].astype(str)
    p = np.asarray(y_pred, dtype=object)[mask].astype(str)
    return {
        "accuracy": float(accuracy_score(t, p)),
        "macro_f1": float(f1_score(t, p, average="macro", zero_division=0)),
        "n_cells": int(mask.sum()),
    }


def score_predictions(adata: AnnData, *, truth_key: str, labels_key: str | None = None) -> dict:
    """Score ``obs['<labels_key>_pred']`` (written by ``predict``) against ``obs[truth_key]``.

    ``labels_key`` defaults to ``truth_key``; see :func:`evaluate` for the scores.
    """
    key = pred_key(labels_key or truth_key)
    check_obs_key(adata, key)
    check_obs_key(adata, truth_key)
    return evaluate(adata.obs[truth_key].to_numpy(), adata.obs[key].to_numpy())


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error (Guo et al. 2017).

    The mean ``|accuracy - confidence|`` over ``n_bins`` equal-width bins of the highest
    probability, weighted by the cells in each bin. ``proba``: ``(n_cells, n_classes)``;
    ``y``: true class codes (column indices).
    """
    conf = proba.max(1)
    hit = proba.argmax(1) == y
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        in_b = bins == b
        total += in_b.sum() * abs(hit[in_b].mean() - conf[in_b].mean())
    return float(total / max(len(y), 1))
