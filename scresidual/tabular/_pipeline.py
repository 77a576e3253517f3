"""Tabular pipeline: an MLP source on one population, REFINE on another with few labels.

Populations (fixed, stated so results can be compared):

* Adult: source = 10,000 people born in the United States (``native_country ==
  "United-States"``) from ``adult.data``; target = 1,000 labelled people born elsewhere (or
  with unknown country) from ``adult.data``; test = every person born elsewhere (or unknown)
  in ``adult.test`` (1,619). Metric: accuracy.
* German credit: source = applicants aged 30 or more; target = 150 labelled applicants under
  30; test = the remaining applicants under 30. Metric: ROC-AUC (positive = bad credit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .._task import StressTask, split_indices
from ..sources import SourceClassifier, pretrain_mlp_source
from ._data import ADULT_CATEGORICAL, GERMAN_CATEGORICAL, TabularEncoder, load_adult, load_german

RESIDUAL_ENCODER = ("mlp", {"n_hidden": [64], "n_out": 32, "dropout": 0.2})
"""Default residual encoder for one-hot/standardised columns."""


def pretrain_tabular_source(
    x, y, *, n_classes: int, epochs: int = 20, seed: int = 0
) -> SourceClassifier:
    """Pretrain an MLP source (``MLPEncoder`` + linear head) on encoded columns ``(n, d)``."""
    return pretrain_mlp_source(
        x, y, n_classes=n_classes, n_hidden=128, n_out=64, epochs=epochs, seed=seed
    )


def _task(dataset, metric, categorical, source, target, test, quick, n_target) -> StressTask:
    (df_s, y_s), (df_t, y_t), (df_e, y_e) = source, target, test
    cap = (2000, n_target, 2000) if quick else (10_000, n_target, len(y_e))
    s = split_indices(len(y_s), [min(cap[0], len(y_s))], seed=0)[0]
    t = split_indices(len(y_t), [min(cap[1], len(y_t))], seed=0)[0]
    e = split_indices(len(y_e), [min(cap[2], len(y_e))], seed=0)[0]
    enc = TabularEncoder(categorical).fit(pd.concat([df_s.iloc[s], df_t.iloc[t]]))
    xs, xt, xe = (enc.transform(d) for d in (df_s.iloc[s], df_t.iloc[t], df_e.iloc[e]))
    return StressTask(
        modality="tabular",
        dataset=dataset,
        metric=metric,
        n_classes=2,
        source_x=xs,
        source_y=y_s[s],
        target_x=xt,
        target_y=y_t[t],
        target_r=xt,
        test_x=xe,
        test_y=y_e[e],
        test_r=xe,
        pretrain=lambda x, y, seed: pretrain_tabular_source(
            x, y, n_classes=2, epochs=5 if quick else 15, seed=seed
        ),
        encoder=RESIDUAL_ENCODER,
        fit_options={
            "max_epochs": 15 if quick else 60,
            "patience": 5 if quick else 10,
            "folds": 1 if quick else None,  # quick: one validation split, no cross-fitting
            # accuracy is scored: unweighted loss; ROC-AUC: balanced classes
            "class_weight": None if metric == "accuracy" else "balanced",
        },
    )


def adult_task(data_dir: str | Path, *, quick: bool = False) -> StressTask:
    """Adult: source 10,000 US-born, target 1,000 born elsewhere, test born elsewhere."""
    df, y = load_adult(data_dir, "train")
    df_test, y_test = load_adult(data_dir, "test")
    us = (df["native_country"] == "United-States").to_numpy()
    away = ~(df_test["native_country"] == "United-States").to_numpy()
    return _task(
        "adult",
        "accuracy",
        ADULT_CATEGORICAL,
        (df[us], y[us]),
        (df[~us], y[~us]),
        (df_test[away], y_test[away]),
        quick,
        1000,
    )


def german_task(data_dir: str | Path, *, quick: bool = False) -> StressTask:
    """German credit: source age >= 30, target 150 labelled under 30, test the other under 30."""
    df, y = load_german(data_dir)
    old = (df["A13"] >= 30).to_numpy()
    young = np.flatnonzero(~old)
    n_tgt = min(150, len(young) // 2)
    tgt, test = split_indices(len(young), [n_tgt, len(young) - n_tgt], seed=0)
    tgt, test = young[tgt], young[test]
    return _task(
        "german_credit",
        "roc_auc",
        GERMAN_CATEGORICAL,
        (df[old], y[old]),
        (df.iloc[tgt], y[tgt]),
        (df.iloc[test], y[test]),
        quick,
        n_tgt,
    )


def stress_tasks(data_dir: str | Path, *, quick: bool = False) -> list[StressTask]:
    """The tabular stress tasks (Adult, German credit)."""
    return [adult_task(data_dir, quick=quick), german_task(data_dir, quick=quick)]
