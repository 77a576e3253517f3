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

PARQUET_SUFFIXES = (".parquet", ".pq")


def as_path(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path`, raising for anything that is not a path."""
    if not isinstance(path, str | os.PathLike):
        raise ScResidualError(
            f"{what} must be a file path, got {type(path).__name__}; pass a str or pathlib.Path."
        )
    return Path(path).expanduser()


def require_file(path: Path, what: str, fix: str) -> Path:
    """Raise unless ``path`` is an existing regular file."""
    if not path.exists():
        raise ScResidualError(f"{what} not found: {path}; {fix}.")
    if not path.is_file():
        raise ScResidualError(f"{what} {path} is a folder, not a file; {fix}.")
    return path


def require_dir(path: Path, what: str, fix: str) -> Path:
    """Raise unless ``path`` is an existing folder."""
    if not path.exists():
        raise ScResidualError(f"{what} not found: {path}; {fix}.")
    if not path.is_dir():
        raise ScResidualError(f"{what} {path} is a file, not a folder; {fix}.")
    return path


def first_existing(folder: Path, names: list[str]) -> Path | None:
    """Return the first of ``folder / name`` that exists, or ``None``."""
    for name in names:
        candidate = folder / name
        if candidate.exists():
            return candidate
    return None


def decode(values) -> np.ndarray:
    """Decode an array of ``bytes`` (as stored by h5py/parquet) to an object array of ``str``."""
    arr = np.asarray(values)
    if arr.dtype.kind == "S" or (arr.dtype == object and arr.size and isinstance(arr[0], bytes)):
        out = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in arr]
        return np.array(out, dtype=object)
    return arr.astype(str).astype(object)


def _plain_suffix(path: Path) -> str:
    """The file suffix ignoring a trailing compression suffix (``.csv.gz`` -> ``.csv``)."""
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in (".gz", ".bz2", ".zip", ".xz", ".zst"):
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def read_frame(path: Path, what: str, *, sep: str | None = None, header: bool = True,
               dtype=None) -> pd.DataFrame:
    """Read a CSV/TSV (optionally compressed) or Parquet table, wrapping every parse failure.

    Parameters
    ----------
    path
        The table file.
    what
        Description of the file used in error messages.
    sep
        Column separator for text tables; ``None`` infers it from the suffix
        (``.tsv``/``.txt`` -> tab, otherwise comma).
    header
        Whether the first line of a text table holds column names.
    dtype
        Passed to :func:`pandas.read_csv`.

    Returns
    -------
    The table; parquet files keep a stored non-default index as a column named after it.

    """
    suffix = _plain_suffix(path)
    try:
        if suffix in PARQUET_SUFFIXES:
            df = pd.read_parquet(path)
            if not isinstance(df.index, pd.RangeIndex):
                df = df.reset_index()
        else:
            if sep is None:
                sep = "\t" if suffix in (".tsv", ".txt", ".tab") else ","
            df = pd.read_csv(path, sep=sep, header=0 if header else None, dtype=dtype)
    except ImportError as err:
        raise ScResidualError(
            f"reading {what} {path.name} needs pyarrow; run `pip install pyarrow`."
        ) from err
    except pd.errors.EmptyDataError as err:
        raise ScResidualError(f"{what} {path} is empty; re-export the table.") from err
    except Exception as err:  # parse, decompression, truncation and type errors
        raise ScResidualError(
            f"could not read {what} {path} ({type(err).__name__}: {_first_line(err)}); "
            "check that it is an uncorrupted CSV/TSV or Parquet file."
        ) from err
    if df.shape[0] == 0:
        raise ScResidualError(f"{what} {path} has no rows; re-export the table.")
    return df


def _first_line(err: BaseException) -> str:
    """First line of an exception message, shortened."""
    text = str(err).strip().splitlines()
    line = text[0] if text else "no message"
    return line if len(line) <= 120 else line[:117] + "..."


def require_columns(
    df: pd.DataFrame, columns: list[str], what: str, path: Path, fix: str
) -> None:
    """Raise naming the columns of ``columns`` missing from ``df``; ``fix`` ends the message."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        have = ", ".join(map(str, list(df.columns)[:8])) or "none"
        raise ScResidualError(
            f"{what} {path.name} lacks column(s) {', '.join(missing)} (has: {have}); {fix}."
        )


def numeric_coordinates(df: pd.DataFrame, columns: list[str], what: str) -> np.ndarray:
    """Return ``df[columns]`` as float64, raising if a column is not numeric or not finite."""
    out = np.empty((df.shape[0], len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if bad.any():
            example = df[col][bad].iloc[0]
            raise ScResidualError(
                f"{what} column {col!r} is not numeric (e.g. {example!r}); "
                "store coordinates as numbers."
            )
        out[:, j] = values.to_numpy(dtype=np.float64)
        bad_rows = ~np.isfinite(out[:, j])
        if bad_rows.any():
            example = df.index[np.flatnonzero(bad_rows)[0]]
            raise ScResidualError(
                f"{what} column {col!r} has {int(bad_rows.sum())} missing/NaN/inf values "
                f"(e.g. row {example!r}); fill or drop those rows."
            )
    return out


def finalize_counts(adata: AnnData, *, spatial_key: str = SPATIAL_KEY) -> AnnData:
    """Cast ``X`` to float32 CSR, copy it to ``layers['counts']`` and run the shared checks."""
    X = adata.X
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sum_duplicates()
    X.sort_indices()
    adata.X = X
    check_unique_obs_names(adata)
    check_counts(adata)
    adata.layers[COUNTS_LAYER] = X.copy()
    check_spatial(adata, spatial_key)
    return adata
