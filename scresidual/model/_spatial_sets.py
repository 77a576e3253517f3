"""The spatial model's predictions written into an AnnData, with calibration and sets.

Labels, calibrated probabilities, uncertainty and split-conformal prediction sets.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import pred_key, proba_classes_key, proba_key
from .._errors import ScResidualError
from ._calibration import (
    calibration_problem,
    check_alpha,
    check_method,
    thin_note,
    write_uncertainty,
)

logger = logging.getLogger(__name__)


def read_only(adata: AnnData) -> bool:
    """Whether ``adata`` is backed by a file opened read-only."""
    if not adata.isbacked:
        return False
    mode = getattr(getattr(adata.file, "_file", None), "mode", "r")
    return mode != "r+"


def copy_to_memory(adata: AnnData) -> AnnData:
    """A copy of ``adata``; of a backed one, everything but ``X``, which stays on disk."""
    if not adata.isbacked:
        return adata.copy()
    return AnnData(
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        obsm={k: np.asarray(v).copy() for k, v in adata.obsm.items()},
        uns=dict(adata.uns),
    )


def write_predictions(
    model, adata, *, key_added, copy: bool, sets, alpha: float, method: str
) -> AnnData | None:
    """:meth:`SpatialRegionClassifier.predict` for an AnnData (see there)."""
    adata = model.adata if adata is None else adata
    key = key_added or model.setup["labels_key"]
    if read_only(adata) and not copy:
        raise ScResidualError(
            f"adata is backed by {adata.filename} opened read-only; use predict_proba(adata) "
            "for the probabilities, predict(adata, copy=True), or open it with backed='r+'."
        )
    check_alpha(alpha)
    check_method(method)
    core = model._fitted()
    problem = calibration_problem(core)
    if problem and sets:
        raise ScResidualError(problem)
    proba = model.predict_proba(adata)  # first: a source that cannot load fails alone
    if problem and sets is None:
        logger.warning("no prediction sets: %s", problem)
    if copy:
        adata = copy_to_memory(adata)
    adata.obs[pred_key(key)] = pd.Categorical(
        np.asarray(model.classes_, dtype=object)[proba.to_numpy().argmax(1)],
        categories=model.classes_,
    )
    adata.obsm[proba_key(key)] = proba.to_numpy().astype(np.float32)
    adata.uns[proba_classes_key(key)] = np.asarray(model.classes_, dtype=object)
    write_sets = sets is not False and not problem
    if write_sets and core.calibration_.thin_classes:
        logger.warning("%s", thin_note(core.calibration_.thin_classes))
    write_uncertainty(
        adata,
        key,
        proba.to_numpy(),
        model.classes_,
        core.calibration_,
        sets=write_sets,
        alpha=alpha,
        method=method,
    )
    return adata if copy else None
