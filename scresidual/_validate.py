"""Input checks that fail early with a one-line message naming the problem and the fix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ._constants import SPATIAL_KEY
from ._errors import ScResidualError


def _values(X) -> np.ndarray:
    """The stored values of a dense or sparse matrix (no densifying)."""
    return X.data if sp.issparse(X) else np.asarray(X)


def check_obs_key(adata: AnnData, key: str) -> None:
    """Raise if ``key`` is not a column of ``adata.obs``."""
    if key not in adata.obs:
        cols = ", ".join(map(str, list(adata.obs.columns)[:8])) or "none"
        raise ScResidualError(f"obs key {key!r} not found; available obs columns: {cols}.")


def check_obsm_key(adata: AnnData, key: str) -> None:
    """Raise if ``key`` is not in ``adata.obsm``."""
    if key not in adata.obsm:
        keys = ", ".join(map(str, adata.obsm.keys())) or "none"
        raise ScResidualError(f"obsm key {key!r} not found; available obsm keys: {keys}.")


def check_finite(X, what: str) -> None:
    """Raise if ``X`` holds NaN or inf."""
    vals = _values(X)
    if vals.dtype.kind in "fc" and not np.isfinite(vals).all():
        n_bad = int((~np.isfinite(vals)).sum())
        raise ScResidualError(f"{what} holds {n_bad} NaN/inf values; remove or impute them first.")


def check_counts(adata: AnnData, *, layer: str | None = None) -> None:
    """Raise unless the matrix looks like raw counts: finite and non-negative."""
    X = adata.layers[layer] if layer is not None else adata.X
    what = f"layers[{layer!r}]" if layer is not None else "adata.X"
    if X is None:
        raise ScResidualError(f"{what} is empty; load an expression matrix first.")
    check_finite(X, what)
    vals = _values(X)
    if vals.size and vals.min() < 0:
        raise ScResidualError(
            f"{what} has negative values but raw counts are required; pass the counts layer "
            "(e.g. layer='counts') instead of scaled data."
        )


def check_unique_obs_names(adata: AnnData) -> None:
    """Raise if cell names repeat."""
    if adata.obs_names.has_duplicates:
        dup = adata.obs_names[adata.obs_names.duplicated()][0]
        raise ScResidualError(
            f"duplicate cell names (e.g. {dup!r}); call adata.obs_names_make_unique() first."
        )


def check_spatial(adata: AnnData, spatial_key: str = SPATIAL_KEY) -> np.ndarray:
    """Return the coordinates in ``obsm[spatial_key]`` after checking them."""
    if spatial_key not in adata.obsm:
        raise ScResidualError(
            f"no spatial coordinates in adata.obsm[{spatial_key!r}]; store an (n_obs, 2) array "
            "of x/y positions there or pass spatial_key=."
        )
    xy = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ScResidualError(
            f"adata.obsm[{spatial_key!r}] has shape {xy.shape}; expected (n_obs, 2) or (n_obs, 3)."
        )
    check_finite(xy, f"adata.obsm[{spatial_key!r}]")
    return xy
