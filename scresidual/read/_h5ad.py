"""``.h5ad`` loader with up-front checks of the file and its contents."""

from __future__ import annotations

import os
from typing import Literal

import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._constants import SPATIAL_KEY
from .._errors import ScResidualError
from .._validate import check_finite, check_spatial, check_unique_obs_names
from ._common import as_path, require_path

_CHUNK_ROWS = 20_000


def _probe(path) -> None:
    """Check cheaply (names only) that ``path`` is an AnnData HDF5 store."""
    if not h5py.is_hdf5(path):
        raise ScResidualError(
            f"{path} is not an HDF5/.h5ad file (wrong file type or damaged header); pass an "
            ".h5ad written by anndata."
        )
    try:
        with h5py.File(path, "r") as f:
            keys, encoding = set(f.keys()), f.attrs.get("encoding-type", b"")
    except Exception as err:  # h5py raises OSError for truncated files
        raise ScResidualError(
            f"could not open {path}: the file is truncated or corrupt ({type(err).__name__}); "
            "re-copy or re-write it."
        ) from err
    if "matrix" in keys and "obs" not in keys:
        raise ScResidualError(
            f"{path} is a 10x count matrix, not an .h5ad; read it with "
            "scresidual.read.visium() or scresidual.read.xenium()."
        )
    if encoding not in ("anndata", b"anndata") and not {"obs", "var"} <= keys:
        raise ScResidualError(
            f"{path} is an HDF5 file but not an AnnData .h5ad (no 'obs'/'var' groups); pass an "
            ".h5ad written by anndata."
        )


def _caused_by(err: BaseException | None, kind: type) -> bool:
    """Whether ``err`` or an exception it was raised from is a ``kind``."""
    for _ in range(32):  # exception chains are short; the bound guards against cycles
        if err is None or isinstance(err, kind):
            return err is not None
        err = err.__cause__ or err.__context__
    return False


def _check_x_finite(adata: AnnData) -> None:
    """Check ``X`` for NaN/inf; a backed ``X`` is read in row chunks, never whole."""
    if adata.X is not None and not adata.isbacked:
        check_finite(adata.X, "adata.X")
    if adata.X is None or not adata.isbacked:
        return
    n_bad = 0
    for start in range(0, adata.n_obs, _CHUNK_ROWS):
        block = adata.X[start : start + _CHUNK_ROWS]
        vals = block.data if sp.issparse(block) else np.asarray(block)
        n_bad += int((~np.isfinite(vals)).sum()) if vals.dtype.kind in "fc" else 0
    if n_bad:
        raise ScResidualError(f"adata.X holds {n_bad} NaN/inf values; remove or impute them first.")


def h5ad(
    path: str | os.PathLike,
    *,
    spatial_key: str = SPATIAL_KEY,
    require_spatial: bool = True,
    backed: Literal["r"] | None = None,
) -> AnnData:
    """Read an ``.h5ad`` file and check it.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    spatial_key
        ``obsm`` key of the spatial coordinates.
    require_spatial
        Raise if ``obsm[spatial_key]`` is absent. Coordinates that are present are always
        checked (shape, finite).
    backed
        ``"r"`` opens the file read-only in backed mode (passed to :func:`anndata.read_h5ad`);
        ``None`` loads it into memory. Write modes are refused: loaders never modify inputs.

    Returns
    -------
    The AnnData, with unique ``obs_names``, finite ``X`` and (when present or required)
    finite (n_obs, 2|3) coordinates in ``obsm[spatial_key]``.

    """
    if backed not in (None, "r"):
        raise ScResidualError(
            f"backed={backed!r} is not supported; pass backed='r' (read-only) or None."
        )
    p = require_path(as_path(path, "path"), "h5ad file", "check the path")
    _probe(p)
    try:
        adata = ad.read_h5ad(p, backed=backed)
    except Exception as err:  # truncated datasets surface only on read
        if _caused_by(err, UnicodeDecodeError):
            raise ScResidualError(
                f"{p} holds text that is not UTF-8 (in obs, var or their names); re-encode "
                "those strings as UTF-8 and write the file again."
            ) from err
        raise ScResidualError(
            f"could not read {p}: truncated, corrupt or not written by anndata "
            f"({type(err).__name__}); re-copy or re-write it."
        ) from err
    try:
        check_unique_obs_names(adata)
        _check_x_finite(adata)
        if require_spatial or spatial_key in adata.obsm:
            check_spatial(adata, spatial_key)
    except ScResidualError as err:
        if adata.isbacked:
            adata.file.close()
        raise ScResidualError(f"{p.name}: {err}") from err
    return adata
