"""Helpers shared by the loaders: one error wrapper around the libraries, tables, final checks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import COUNTS_LAYER
from .._errors import ScResidualError, first_line


@contextmanager
def reading(what: str, path: str | os.PathLike, fix: str) -> Iterator[None]:
    """Turn any exception of the block into one line: ``could not read <what> <path> (...)``.

    The library that reads (anndata, scanpy, pandas, h5py, spatialdata) names the cause: a
    truncated or foreign file, a missing column, a repeated id; a missing file is said plainly.
    ``fix`` ends the message. A :class:`~scresidual._errors.ScResidualError` of the block
    passes unchanged.
    """
    try:
        yield
    except ScResidualError:
        raise
    except FileNotFoundError as err:
        where = err.filename or f"{path} ({first_line(err)})"  # the library names the file
        raise ScResidualError(f"{what} not found: {where}; check the path, or {fix}.") from err
    except Exception as err:
        raise ScResidualError(
            f"could not read {what} {path} ({type(err).__name__}: {first_line(err)}); {fix}."
        ) from err


TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".tab", ".parquet", ".pq")
"""Suffixes of the tables :func:`read_frame` reads (before any ``.gz``)."""


def read_frame(path: Path, *, sep: str | None = None, header: bool = True, dtype=None):
    """A CSV/TSV (optionally compressed) or Parquet table, as a DataFrame.

    ``sep=None`` takes a tab for ``.tsv``/``.txt``/``.tab`` files, else a comma; pandas infers
    the compression from the suffix. A parquet file's non-default index becomes a column.
    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] in ([".parquet"], [".pq"]):
        df = pd.read_parquet(path)
        return df if isinstance(df.index, pd.RangeIndex) else df.reset_index()
    sep = sep or ("\t" if {".tsv", ".txt", ".tab"} & set(suffixes[-2:]) else ",")
    return pd.read_csv(path, sep=sep, header=0 if header else None, dtype=dtype)


def text_index(values) -> pd.Index:
    """Cell ids or barcodes as a ``str`` index; bytes (from some parquet files) are decoded."""
    return pd.Index([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def coordinate_array(frame: pd.DataFrame, columns: list[str], what: str, fix: str) -> np.ndarray:
    """``frame[columns]`` as float64, raising if a value is missing, not a number or not finite.

    ``frame`` is a table reindexed to the cells of the count matrix, so a cell the table lacks
    is a row of NaN and is reported too. ``what`` names the table, ``fix`` ends the message.
    """
    xy = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    rows, cols = np.nonzero(~np.isfinite(xy))
    if rows.size:
        raise ScResidualError(
            f"{np.unique(rows).size} of {len(frame)} cells lack a row or a number in {what} "
            f"(e.g. cell {frame.index[rows[0]]!r}, column {columns[cols[0]]!r}); {fix}."
        )
    return xy


def finalize_counts(adata: AnnData, source: str, fix: str) -> AnnData:
    """Check the counts read from ``source``; keep them as float32 CSR in ``X`` and ``counts``.

    Raises (``fix`` ending the message) for an empty matrix, a repeated cell id and NaN, inf
    or negative counts: the libraries accept all of these silently.
    """
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    X.sum_duplicates()
    X.sort_indices()
    repeated = adata.obs_names[adata.obs_names.duplicated()]
    problem = (
        f"{adata.n_obs} cells x {adata.n_vars} genes"
        if 0 in adata.shape
        else f"the cell id {repeated[0]!r} twice"
        if len(repeated)
        else f"{int((~np.isfinite(X.data)).sum())} NaN/inf counts"
        if not np.isfinite(X.data).all()
        else f"{int((X.data < 0).sum())} negative counts"
        if (X.data < 0).any()
        else None
    )
    if problem:
        raise ScResidualError(f"{source} holds {problem}; {fix}.")
    adata.X, adata.layers[COUNTS_LAYER] = X, X.copy()
    return adata
