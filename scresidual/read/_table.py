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
    finalize_counts,
    numeric_coordinates,
    read_frame,
    require_columns,
    require_path,
    unique_ids,
)


def _id_column(df: pd.DataFrame, *preferred: str | None) -> str:
    """The first of ``preferred`` that is a column of ``df``, else its first column."""
    return next((c for c in preferred if c is not None and c in df.columns), df.columns[0])


def _cell_ids(df: pd.DataFrame, column: str, what: str, path) -> pd.Index:
    return unique_ids(
        df.pop(column),
        f"duplicate cell id {{dup}} in column {column!r} of {what} "
        f"{path.name}; make the cell ids unique.",
    )


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
    for n_bad, problem, fix in (
        (np.isnan(values).sum(), "missing/NaN counts", "fill empty entries with 0"),
        (np.isinf(values).sum(), "infinite counts", "pass raw integer counts"),
        (
            (values < 0).sum(),
            "negative values but raw counts are required",
            "pass the raw count table, not scaled data",
        ),
    ):
        if n_bad:
            raise ScResidualError(f"counts table {path.name} has {n_bad} {problem}; {fix}.")
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
    counts_path = require_path(as_path(counts, "counts"), "counts table", "check the path")
    coords_path = require_path(
        as_path(coordinates, "coordinates"), "coordinates table", "check the path"
    )
    genes = read_frame(counts_path, "counts table", sep=sep)
    if cell_id_column is not None:
        require_columns(
            genes, [cell_id_column], "counts table", counts_path, "pass the right cell_id_column="
        )
    id_col = _id_column(genes, cell_id_column)
    ids = _cell_ids(genes, id_col, "counts table", counts_path)
    if genes.shape[1] == 0:
        raise ScResidualError(
            f"counts table {counts_path.name} has no gene columns besides {id_col!r}; store one "
            "column per gene."
        )
    values = _count_matrix(genes, counts_path)

    cdf = read_frame(coords_path, "coordinates table", sep=sep)
    require_columns(cdf, [x, y], "coordinates table", coords_path, "pass the right x=/y=")
    if cdf.shape[1] == 2:
        raise ScResidualError(
            f"coordinates table {coords_path.name} has no cell-id column besides {x!r}/{y!r}; "
            "add one or pass cell_id_column=."
        )
    cid_col = _id_column(cdf.drop(columns=[x, y]), cell_id_column, id_col)
    cdf.index = _cell_ids(cdf, cid_col, "coordinates table", coords_path)
    missing = ~ids.isin(cdf.index)
    if missing.any():
        raise ScResidualError(
            f"{int(missing.sum())} of {len(ids)} cell ids in {counts_path.name} are missing from "
            f"{coords_path.name} (e.g. {ids[missing][0]!r}); use matching tables or check "
            "cell_id_column=."
        )
    cdf = cdf.loc[ids]
    xy = numeric_coordinates(cdf, [x, y], f"coordinates table {coords_path.name}")
    var = pd.DataFrame(index=make_index_unique(pd.Index(genes.columns.astype(str))))
    adata = AnnData(X=sp.csr_matrix(values), obs=cdf.drop(columns=[x, y]), var=var)
    adata.obsm[SPATIAL_KEY] = xy
    return finalize_counts(adata)
