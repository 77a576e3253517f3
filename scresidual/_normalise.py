"""Per-cell total-count normalisation then ``log1p``: the one implementation in scresidual."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

TARGET_SUM = 1e4
"""Counts per cell after normalisation (scanpy's and scGPT's convention)."""


def log1p_normalise(X, *, totals: np.ndarray | None = None, log: bool = True):
    """Scale each cell (row) of ``X`` to :data:`TARGET_SUM` counts, then ``log1p``.

    Parameters
    ----------
    X
        Cells × genes counts, dense or sparse; not modified.
    totals
        Counts per cell to scale by, for an ``X`` holding only some of each cell's genes;
        by default the row sums of ``X`` (``scanpy.pp.normalize_total``).
    log
        Apply ``log1p`` after scaling (``False``: scaled counts only).

    Returns
    -------
    A float32 array, or CSR matrix for sparse ``X``; cells with no counts stay zero.

    """
    import scanpy as sc  # heavy import, only when normalising

    # float64: float32 row sums of very large counts overflow to inf.
    X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.array(X, dtype=np.float64)
    if totals is None:
        with warnings.catch_warnings():  # all-zero cells are expected and stay zero
            warnings.filterwarnings("ignore", "Some cells have zero counts", UserWarning)
            X = sc.pp.normalize_total(AnnData(X), target_sum=TARGET_SUM, inplace=False)["X"]
    else:
        totals = np.asarray(totals, dtype=np.float64).ravel()
        scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
        X = sp.diags(scale) @ X
    X = sc.pp.log1p(X) if log else X
    return X.astype(np.float32)
