"""``.h5ad`` loader: :func:`anndata.read_h5ad`, then checks of what it accepts silently."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

import anndata as ad
import h5py
from anndata import AnnData

from .._constants import SPATIAL_KEY
from .._docs import doc_params, doc_spatial_key
from .._errors import ScResidualError
from .._genes import iter_row_blocks
from .._validate import check_finite, check_spatial, check_unique_obs_names
from ._common import TABLE_SUFFIXES, reading


def _is_10x_h5(path: Path) -> bool:
    """Whether ``path`` is a 10x count matrix HDF5 (anndata's error for one misleads)."""
    with contextlib.suppress(Exception), h5py.File(path, "r") as f:
        return "matrix" in f and "obs" not in f
    return False


@doc_params(doc_spatial_key=doc_spatial_key)
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
        {doc_spatial_key}
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
    path = Path(path).expanduser()
    if not path.exists():
        raise ScResidualError(f"file not found: {path}; check the path.")
    if {s.lower() for s in path.suffixes[-2:]} & set(TABLE_SUFFIXES):
        raise ScResidualError(
            f"{path} is a table, not an .h5ad; read counts and coordinates tables with "
            "scresidual.read.table(counts, coordinates) (command line: the counts table as "
            "the input, --coordinates FILE)."
        )
    if _is_10x_h5(path):
        raise ScResidualError(
            f"{path} is a 10x count matrix, not an .h5ad; read it with "
            "scresidual.read.visium() or scresidual.read.xenium()."
        )
    fix = "pass an uncorrupted .h5ad written by anndata, its text in UTF-8"
    with reading("h5ad file", path, fix):
        adata = ad.read_h5ad(path, backed=backed)
    try:
        check_unique_obs_names(adata)
        for _, block in iter_row_blocks(adata) if adata.X is not None else ():
            check_finite(block, "adata.X")  # a backed X is read in row blocks, never whole
        if require_spatial or spatial_key in adata.obsm:
            check_spatial(adata, spatial_key)
    except ScResidualError as err:
        if adata.isbacked:
            adata.file.close()
        raise ScResidualError(f"{path.name}: {err}") from err
    return adata
