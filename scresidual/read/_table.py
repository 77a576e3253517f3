"""Generic loader: a cells x genes counts table plus a table of cell coordinates."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from anndata.utils import make_index_unique

from .._constants import SPATIAL_KEY
from .._errors import ScResidualError
from ._common import (
    as_path,
    decode,
    finalize_counts,
    numeric_coordinates,
    read_frame,
    require_columns,
    require_file,
)


def _id_column(df: pd.DataFrame, wanted: str | None, fallback: str | None) -> str:
    """Pick the cell-id column: ``wanted``, else ``fallback`` when present, else the first."""
    if wanted is not None and wanted in df.columns:
        return wanted
    if fallback is not None and fallback in df.columns:
        return fallback
    return df.columns[0]


def _cell_ids(df: pd.DataFrame, column: str, what: str, path) -> pd.Index:
    ids = pd.Index(decode(df[column].to_numpy()), dtype=object)
    if ids.has_duplicates:
        dup = ids[ids.duplicated()][0]
        raise ScResidualError(
            f"duplicate cell id {dup!r} in column {column!r} of {what} {path.name}; make the "
            "cell ids unique."
        )
    return ids


def _count_matrix(df: pd.DataFrame, path) -> np.ndarray:
    """The gene columns of ``df`` as a float32 array, checking numeric, finite, non-negative."""
    bad = [c for c in df.columns if df[c].dtype.kind not in "iuf"]
    if bad:
        shown = ", ".join(repr(str(c)) for c in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise ScResidualError(
            f"{len(bad)} gene column(s) of counts table {path.name} are not numeric ({shown}); "
            "keep only the cell-id column and numeric counts, or pass cell_id_column=."
        )
    values = df.to_numpy(dtype=np.float64)
    n_nan = int(np.isnan(values).sum())
    if n_nan:
        raise ScResidualError(
            f"counts table {path.name} has {n_nan} missing/NaN counts; fill empty entries with 0."
        )
    n_inf = int(np.isinf(values).sum())
    if n_inf:
        raise ScResidualError(
            f"counts table {path.name} has {n_inf} infinite counts; pass raw integer counts."
        )
    n_neg = int((values < 0).sum())
    if n_neg:
        raise ScResidualError(
            f"counts table {path.name} has {n_neg} negative values but raw counts are required; "
            "pass the raw count table, not scaled data."
        )
    return values.astype(np.float32)


def table(
    counts: str | os.PathLike,
    coordinates: str | os.PathLike,
    *,
    cell_id_column: str | None = None,
    x: str = "x",
    y: str = "y",
    sep: str | None = None,
) -> AnnData:
    """Read a cells x genes counts table and a coordinates table into one AnnData.

    Parameters
    ----------
    counts
        CSV/TSV (optionally gzipped) or Parquet table, one row per cell; the cell-id column
        (``cell_id_column``, else the first column) plus one numeric column per gene.
    coordinates
        CSV/TSV or Parquet table with a cell-id column and the ``x`` and ``y`` columns. The
        id column is ``cell_id_column`` when present, else the counts table's id column name when
        present, else the first column. Other columns are kept in ``obs``.
    cell_id_column
        Name of the cell-id column.
    x, y
        Coordinate column names in ``coordinates``.
    sep
        Separator of text tables; ``None`` infers it from the suffix (``.tsv``/``.txt`` -> tab,
        else comma).

    Returns
    -------
    AnnData with counts in ``X`` and ``layers['counts']`` (float32 CSR) and the coordinates in
    ``obsm['spatial']``, in the row order of the counts table. Every counts cell must have
    coordinates; extra coordinate rows are ignored. Input files are only read.

    """
    counts_path = require_file(as_path(counts, "counts"), "counts table", "check the path")
    coords_path = require_file(
        as_path(coordinates, "coordinates"), "coordinates table", "check the path"
    )

    df = read_frame(counts_path, "counts table", sep=sep)
    if cell_id_column is not None:
        require_columns(
            df, [cell_id_column], "counts table", counts_path, "pass the right cell_id_column="
        )
    id_col = _id_column(df, cell_id_column, None)
    ids = _cell_ids(df, id_col, "counts table", counts_path)
    genes = df.drop(columns=id_col)
    if genes.shape[1] == 0:
        raise ScResidualError(
            f"counts table {counts_path.name} has no gene columns besides {id_col!r}; store one "
            "column per gene."
        )
    values = _count_matrix(genes, counts_path)

    cdf = read_frame(coords_path, "coordinates table", sep=sep)
    require_columns(cdf, [x, y], "coordinates table", coords_path, "pass the right x=/y=")
    cid_col = _id_column(cdf.drop(columns=[x, y]) if cdf.shape[1] > 2 else cdf, cell_id_column,
                         id_col)
    if cid_col in (x, y):
        raise ScResidualError(
            f"coordinates table {coords_path.name} has no cell-id column besides {x!r}/{y!r}; "
            "add one or pass cell_id_column=."
        )
    cids = _cell_ids(cdf, cid_col, "coordinates table", coords_path)
    cdf = cdf.drop(columns=cid_col)
    cdf.index = cids
    missing = ~ids.isin(cids)
    if missing.any():
        raise ScResidualError(
            f"{int(missing.sum())} of {len(ids)} cell ids in {counts_path.name} are missing from "
            f"{coords_path.name} (e.g. {ids[missing][0]!r}); use matching tables or check "
            "cell_id_column=."
        )
    cdf = cdf.loc[ids]
    xy = numeric_coordinates(cdf, [x, y], f"coordinates table {coords_path.name}")

    obs = cdf.drop(columns=[x, y])
    obs.index = pd.Index(ids.astype(str), name=None)
    var = pd.DataFrame(index=make_index_unique(pd.Index(genes.columns.astype(str))))
    adata = AnnData(X=sp.csr_matrix(values), obs=obs, var=var)
    adata.obsm[SPATIAL_KEY] = xy
    return finalize_counts(adata)
