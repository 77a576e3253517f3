"""Small helpers shared by the loaders: path checks, table reading, final validation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import COUNTS_LAYER, SPATIAL_KEY
from .._errors import ScResidualError
from .._validate import check_counts, check_spatial, check_unique_obs_names


def as_path(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path`, raising for anything that is not a path."""
    if not isinstance(path, str | os.PathLike):
        raise ScResidualError(
            f"{what} must be a file path, got {type(path).__name__}; pass a str or pathlib.Path."
        )
    return Path(path).expanduser()


def require_path(path: Path, what: str, fix: str, *, folder: bool = False) -> Path:
    """Raise unless ``path`` is an existing file (or, with ``folder``, an existing folder)."""
    if not path.exists():
        raise ScResidualError(f"{what} not found: {path}; {fix}.")
    if path.is_dir() != folder:
        kind = ("a file, not a folder", "a folder, not a file")[path.is_dir()]
        raise ScResidualError(f"{what} {path} is {kind}; {fix}.")
    return path


def first_existing(folder: Path, names: list[str]) -> Path | None:
    """Return the first of ``folder / name`` that exists, or ``None``."""
    return next((folder / n for n in names if (folder / n).exists()), None)


def first_line(err: BaseException) -> str:
    """First line of an exception message, shortened."""
    line = (str(err).strip().splitlines() or ["no message"])[0]
    return line if len(line) <= 120 else line[:117] + "..."


def read_frame(
    path: Path, what: str, *, sep: str | None = None, header: bool = True, dtype=None
) -> pd.DataFrame:
    """Read a CSV/TSV (optionally compressed) or Parquet table, wrapping every parse failure.

    ``sep=None`` takes a tab for ``.tsv``/``.txt``/``.tab`` files, else a comma; pandas infers
    the compression from the suffix. A parquet file's non-default index becomes a column.
    """
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            df = pd.read_parquet(path)
            df = df if isinstance(df.index, pd.RangeIndex) else df.reset_index()
        else:
            tab = {".tsv", ".txt", ".tab"} & set(suffixes[-2:])
            sep = sep or ("\t" if tab else ",")
            df = pd.read_csv(path, sep=sep, header=0 if header else None, dtype=dtype)
    except ImportError as err:
        raise ScResidualError(
            f"reading {what} {path.name} needs pyarrow; run `pip install pyarrow`."
        ) from err
    except pd.errors.EmptyDataError as err:
        raise ScResidualError(f"{what} {path} is empty; re-export the table.") from err
    except Exception as err:  # parse, decompression, truncation and type errors
        raise ScResidualError(
            f"could not read {what} {path} ({type(err).__name__}: {first_line(err)}); "
            "check that it is an uncorrupted CSV/TSV or Parquet file."
        ) from err
    if df.shape[0] == 0:
        raise ScResidualError(f"{what} {path} has no rows; re-export the table.")
    return df


def require_columns(df: pd.DataFrame, columns: list[str], what: str, path: Path, fix: str) -> None:
    """Raise naming the columns of ``columns`` missing from ``df``; ``fix`` ends the message."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        have = ", ".join(map(str, list(df.columns)[:8])) or "none"
        raise ScResidualError(
            f"{what} {path.name} lacks column(s) {', '.join(missing)} (has: {have}); {fix}."
        )


def unique_ids(values, message: str) -> pd.Index:
    """Cell ids or barcodes as a ``str`` index (bytes decoded), raising ``message`` on a repeat.

    ``{dup}`` in ``message`` is replaced by the first repeated id.
    """
    ids = pd.Index([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    if ids.has_duplicates:
        raise ScResidualError(message.replace("{dup}", repr(ids[ids.duplicated()][0])))
    return ids


def numeric_coordinates(df: pd.DataFrame, columns: list[str], what: str) -> np.ndarray:
    """Return ``df[columns]`` as float64, raising if a column is not numeric or not finite."""
    out = np.empty((df.shape[0], len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if bad.any():
            raise ScResidualError(
                f"{what} column {col!r} is not numeric (e.g. {df[col][bad].iloc[0]!r}); "
                "store coordinates as numbers."
            )
        out[:, j] = values.to_numpy(dtype=np.float64)
        bad_rows = np.flatnonzero(~np.isfinite(out[:, j]))
        if bad_rows.size:
            raise ScResidualError(
                f"{what} column {col!r} has {bad_rows.size} missing/NaN/inf values "
                f"(e.g. row {df.index[bad_rows[0]]!r}); fill or drop those rows."
            )
    return out


def finalize_counts(adata: AnnData, *, spatial_key: str = SPATIAL_KEY) -> AnnData:
    """Cast ``X`` to float32 CSR, copy it to ``layers['counts']`` and run the shared checks."""
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    X.sum_duplicates()
    X.sort_indices()
    adata.X = X
    check_unique_obs_names(adata)
    check_counts(adata)
    adata.layers[COUNTS_LAYER] = X.copy()
    check_spatial(adata, spatial_key)
    return adata
