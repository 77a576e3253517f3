"""Functional, scanpy-style entry points to region labelling."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import pandas as pd
from anndata import AnnData

from .._constants import DEFAULT_ENCODER, SETUP_KEY
from .._validate import check_obs_key
from ..metrics import evaluate
from ..model import (
    ENGINE_OPTIONS,
    TRAIN_OPTIONS,
    SpatialRegionClassifier,
    labelled_mask,
    spatial_solver,
)
from ..read.sdata import is_spatialdata


def fit_regions(adata: AnnData, *, labels_key: str, **kwargs) -> SpatialRegionClassifier:
    """Set up, build and train a :class:`~scresidual.model.SpatialRegionClassifier` at once.

    ``adata`` may be a :class:`spatialdata.SpatialData` (pass ``table_key=`` when it has
    several tables). ``kwargs`` are the options of
    :meth:`~scresidual.model.SpatialRegionClassifier.setup_anndata` (``sources``,
    ``features``, ``graph``, …), of the constructor (``arm``, ``encoder``, ``seed``, …) and
    of :meth:`~scresidual.model.SpatialRegionClassifier.train` (``max_epochs``, ``folds``,
    …), each passed where it belongs. ``adata`` is left as it was (the setup registration is
    removed again).
    """
    setup_names = inspect.signature(SpatialRegionClassifier.setup_anndata).parameters
    train_names = {*inspect.signature(SpatialRegionClassifier.train).parameters, *TRAIN_OPTIONS}
    setup = {k: kwargs.pop(k) for k in list(kwargs) if k in setup_names}
    train = {k: kwargs.pop(k) for k in list(kwargs) if k in train_names}
    tables = adata.tables.values() if is_spatialdata(adata) else [adata]
    before = {id(t): t.uns.get(SETUP_KEY) for t in tables}
    try:
        SpatialRegionClassifier.setup_anndata(adata, labels_key=labels_key, **setup)
        model = SpatialRegionClassifier(adata, **kwargs)
    finally:
        for t in tables:
            t.uns.pop(SETUP_KEY, None)
            if before[id(t)] is not None:
                t.uns[SETUP_KEY] = before[id(t)]
    return model.train(**train)


def predict_regions(
    adata: AnnData,
    model: SpatialRegionClassifier,
    *,
    key_added: str | None = None,
    copy: bool = False,
    table_key: str | None = None,
):
    """Predict regions on ``adata`` with a fitted model.

    Writes ``obs['<key>_pred']``, ``obsm['<key>_proba']`` and ``uns['<key>_proba_classes']``
    (see :meth:`SpatialRegionClassifier.predict`); for a :class:`spatialdata.SpatialData`,
    into its table ``table_key``.
    """
    return model.predict(adata, key_added=key_added, copy=copy, table_key=table_key)


def compare_arms(
    adata: AnnData,
    *,
    labels_key: str,
    truth_key: str | None = None,
    test: Mapping[str, AnnData] | None = None,
    arms: Sequence[str] = ("refine", "scratch", "linear-probe", "adapter"),
    **kwargs,
) -> tuple[pd.DataFrame, dict[str, SpatialRegionClassifier]]:
    """Fit every arm on the same data and score each against the truth.

    Parameters
    ----------
    adata
        Training slide(s); ``obs[labels_key]`` holds the labels used for training
        (missing for unlabelled cells).
    labels_key
        Training labels.
    truth_key
        Column with the full truth, for scoring the cells unlabelled in ``labels_key``
        (default: no within-slide score).
    test
        Further slides to score, by name; scored against ``obs[truth_key or labels_key]``.
    arms
        Arms to fit.
    **kwargs
        Options of all arms (sources, features, graph, seed, …). The options of one fitting
        engine only (``max_epochs``, ``lr``, …; ``cv_repeats``) go to the arms that engine
        fits (see :func:`~scresidual.model.spatial_solver`).

    Returns
    -------
    A table with one row per (arm, evaluation set) and the fitted models by arm.

    """
    if truth_key is not None:
        check_obs_key(adata, truth_key)
    rows, models = [], {}
    unlabelled = ~labelled_mask(adata.obs[labels_key].to_numpy())
    engine = {k: kwargs.pop(k) for k in list(kwargs) if k in set().union(*ENGINE_OPTIONS.values())}
    for arm in arms:
        solver = kwargs.get("solver") or spatial_solver(
            arm, kwargs.get("encoder", DEFAULT_ENCODER), kwargs.get("head", "linear")
        )
        own = {k: v for k, v in engine.items() if k in ENGINE_OPTIONS[solver]}
        model = fit_regions(adata, labels_key=labels_key, arm=arm, **kwargs, **own)
        models[arm] = model
        chosen = model.chosen_arm_
        if truth_key is not None and unlabelled.any():
            pred = model.predict_proba(adata).idxmax(axis=1).to_numpy()
            truth = adata.obs[truth_key].to_numpy()[unlabelled]
            rows.append(
                {
                    "arm": arm,
                    "chosen": chosen,
                    "evaluated_on": "unlabelled cells",
                    **evaluate(truth, pred[unlabelled]),
                }
            )
        for name, other in (test or {}).items():
            key = truth_key or labels_key
            check_obs_key(other, key)
            pred = model.predict_proba(other).idxmax(axis=1).to_numpy()
            rows.append(
                {
                    "arm": arm,
                    "chosen": chosen,
                    "evaluated_on": name,
                    **evaluate(other.obs[key].to_numpy(), pred),
                }
            )
    return pd.DataFrame(rows), models
