"""Rows of a large slide read on demand: a backed ``.h5ad`` or a table of a SpatialData ``.zarr``.

:class:`LazyTable` holds what is small per cell (``obs``, the coordinates) and reads the
expression (``X`` or one layer) and ``obsm`` only for the rows asked for, with anndata's
backed sparse datasets (row subsets read from disk, the matrix never loaded whole). The
:class:`RowReader` it hands out is plain data (a path and names), so worker processes and
Dask workers open the file themselves.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import SPATIAL_KEY
from .._errors import ScResidualError
from ._common import reading
from .sdata import _coordinates

_FIX = "pass a store written by spatialdata (sdata.write('slide.zarr'))"


@dataclass(frozen=True)
class RowReader:
    """Reads rows of ``X`` (or ``layer``) and ``obsm`` from a file; picklable.

    ``group`` is the AnnData's folder inside the file: ``''`` for an ``.h5ad``,
    ``'tables/NAME'`` for a table of a ``.zarr`` store.
    """

    path: str
    group: str
    layer: str | None
    obsm_keys: tuple[str, ...]
    var: pd.DataFrame

    @contextmanager
    def _open(self) -> Iterator:
        if self.group:
            import zarr

            yield zarr.open_group(Path(self.path) / self.group, mode="r")
            return
        import h5py

        with h5py.File(self.path, "r") as f:
            yield f

    def read(self, rows: np.ndarray, obs: pd.DataFrame, obsm: dict) -> AnnData:
        """An in-memory AnnData of ``rows`` (sorted), with ``obs`` and extra ``obsm`` given."""
        from anndata.io import sparse_dataset

        def subset(elem):
            kind = elem.attrs.get("encoding-type", "")
            if kind == "csr_matrix" and self.group:
                return _zarr_csr_rows(elem, rows)
            if kind in ("csr_matrix", "csc_matrix"):
                return sparse_dataset(elem)[rows]
            return elem.oindex[rows] if hasattr(elem, "oindex") else elem[rows]

        with self._open() as g:
            X = subset(g["X"] if self.layer is None else g["layers"][self.layer])
            stored = {k: np.asarray(subset(g["obsm"][k])) for k in self.obsm_keys}
        layers = {} if self.layer is None else {self.layer: X}
        return AnnData(
            X=X if self.layer is None else None,
            obs=obs,
            var=self.var,
            obsm={**stored, **obsm},
            layers=layers,
        )


def _zarr_csr_rows(group, rows: np.ndarray):
    """Rows of a CSR matrix in a zarr group, read in one orthogonal selection per array.

    anndata's backed CSR reads row by row in Python; here the positions of all the rows'
    entries are computed at once and zarr fetches only the chunks that hold them.
    """
    import scipy.sparse as sp

    indptr = group["indptr"]
    start = np.asarray(indptr.oindex[rows], dtype=np.int64)
    stop = np.asarray(indptr.oindex[rows + 1], dtype=np.int64)
    lengths = stop - start
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    positions = np.arange(offsets[-1]) + np.repeat(start - offsets[:-1], lengths)
    data = group["data"].oindex[positions] if len(positions) else group["data"][:0]
    indices = group["indices"].oindex[positions] if len(positions) else group["indices"][:0]
    shape = (len(rows), int(group.attrs["shape"][1]))
    return sp.csr_matrix((data, indices, offsets), shape=shape)


def _array_keys(group) -> tuple[str, ...]:
    """``obsm`` entries stored as arrays (dense or sparse), not data frames."""
    if "obsm" not in group:
        return ()
    return tuple(
        k
        for k in group["obsm"]
        if group["obsm"][k].attrs.get("encoding-type", "array") != "dataframe"
    )


@dataclass
class LazyTable:
    """A slide's table with ``obs`` and coordinates in memory and everything else on disk.

    Attributes
    ----------
    path, table
        The file, and for a ``.zarr`` store the name of its table (else ``None``).
    obs
        The table's ``obs``.
    coordinates
        ``(n_obs, d)`` float64 coordinates: the table's ``obsm[spatial_key]``, else the
        centroids of the elements it annotates (as :func:`scresidual.read.spatialdata`).
    reader
        Reads rows of the expression and of ``obsm``.

    """

    path: Path
    table: str | None
    obs: pd.DataFrame
    coordinates: np.ndarray
    reader: RowReader

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        table_key: str | None = None,
        spatial_key: str = SPATIAL_KEY,
        layer: str | None = None,
        obs_columns: Sequence[str] | None = None,
    ) -> LazyTable:
        """Open a ``.zarr`` store's table (``table_key``: may be left out when only one).

        ``obs_columns``: read only these ``obs`` columns (those present) and the index; all
        when ``None``, and whenever the coordinates come from the annotated elements.
        """
        import zarr
        from anndata.io import read_elem

        path = Path(path).expanduser()
        with reading("SpatialData store", path, _FIX):
            tables = zarr.open_group(path / "tables", mode="r")
            names = sorted(tables.group_keys())
        if table_key is None and len(names) != 1:
            raise ScResidualError(
                f"{path} holds {len(names)} tables ({', '.join(names) or 'none'}); choose one "
                "with table_key='NAME'."
            )
        name = table_key or names[0]
        if name not in names:
            raise ScResidualError(
                f"{path} has no table {name!r}; its tables: {', '.join(names) or 'none'}."
            )
        with reading(f"table {name!r} of", path, _FIX):
            g = tables[name]
            var, keys = read_elem(g["var"]), _array_keys(g)
            if spatial_key in keys:
                obs = _obs_columns(g["obs"], obs_columns)
                xy = np.asarray(g["obsm"][spatial_key][:], dtype=np.float64)
            else:
                obs = read_elem(g["obs"])
                attrs = read_elem(g["uns"]).get("spatialdata_attrs", {}) if "uns" in g else {}
                xy = _annotated_centroids(path, name, obs, attrs)
        _check_layer(g, layer, path)
        if not obs.index.is_unique:  # rows map back by position, not by name
            obs.index = pd.RangeIndex(len(obs)).astype(str)
        reader = RowReader(str(path), f"tables/{name}", layer, keys, var)
        return cls(path, name, obs, xy, reader)

    @classmethod
    def from_backed(cls, adata: AnnData, *, spatial_key: str = SPATIAL_KEY, layer=None):
        """The rows of a backed AnnData (``anndata.read_h5ad(path, backed='r')``)."""
        keys = tuple(k for k in adata.obsm if k != spatial_key)
        reader = RowReader(str(adata.filename), "", layer, keys, adata.var.copy())
        xy = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
        return cls(Path(adata.filename), None, adata.obs, xy, reader)

    def sample(self, n: int, *, seed: int = 0, spatial_key: str = SPATIAL_KEY) -> AnnData:
        """``n`` rows drawn at random with ``seed`` (all when fewer), read into memory.

        The rows :class:`scresidual.pp.PCAFeatures` fits on when given the whole table (same
        ``n`` as its ``max_cells`` and same seed): a setup registered on the sample fits the
        same PCA.
        """
        total = len(self.obs)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(total, n, replace=False)) if total > n else np.arange(total)
        return self.rows(rows, spatial_key=spatial_key).to_memory()

    def rows(self, rows: np.ndarray, *, spatial_key: str = SPATIAL_KEY) -> LazyRows:
        """Rows ``rows`` (sorted), still on disk: small to send to another process."""
        obsm = {spatial_key: self.coordinates[rows]}
        return LazyRows(self.reader, rows, self.obs.iloc[rows].copy(), obsm)


@dataclass(frozen=True)
class LazyRows:
    """Rows of a :class:`LazyTable`: their ``obs`` and coordinates, and how to read the rest."""

    reader: RowReader
    rows: np.ndarray
    obs: pd.DataFrame
    obsm: dict

    def to_memory(self) -> AnnData:
        """The rows as an in-memory AnnData (expression and ``obsm`` read from disk)."""
        return self.reader.read(self.rows, self.obs, self.obsm)


def _obs_columns(group, columns: Sequence[str] | None) -> pd.DataFrame:
    """The ``obs`` frame stored in ``group``, or only its index and ``columns``."""
    from anndata.io import read_elem

    if columns is None:
        return read_elem(group)
    index = pd.Index(read_elem(group[group.attrs["_index"]]))
    present = [c for c in columns if c in group.attrs["column-order"]]
    return pd.DataFrame({c: read_elem(group[c]) for c in present}, index=index)


def _check_layer(group, layer: str | None, path: Path) -> None:
    if layer is not None and ("layers" not in group or layer not in group["layers"]):
        raise ScResidualError(
            f"the table of {path} has no layer {layer!r}; pass a layer it has, or none for X."
        )


def _annotated_centroids(path: Path, name: str, obs: pd.DataFrame, attrs: dict) -> np.ndarray:
    """Centroids of the elements table ``name`` annotates, one row per table row."""
    import spatialdata

    with reading("SpatialData store", path, _FIX), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # format and autosharding notices
        # the elements only: the table itself may not fit in memory
        sdata = spatialdata.read_zarr(path, selection=("labels", "points", "shapes"))
    table = AnnData(obs=obs, uns={"spatialdata_attrs": attrs})
    return _coordinates(sdata, table, name, str(path))
