"""Predict a large slide tile by tile: bounded memory, in parallel processes or on Dask.

Each tile (core + halo, :mod:`scresidual.model._tiles`) is read into memory alone, run
through the model's own :meth:`~SpatialRegionClassifier.predict` (graph, features, source
embedding, rings, prediction, uncertainty and sets) and only its core cells' results are
kept. The results are small per cell (probabilities as float32, a label and set code,
the uncertainty), so they are gathered in the calling process and written once, by column.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import ScResidualError
from .._logging import tqdm
from ..read.lazy import LazyTable
from ..read.sdata import is_spatialdata, is_zarr
from ._spatial_sets import copy_to_memory
from ._tile_runner import model_tiles, run_tiles
from ._tiles import Tile
from ._zarr_columns import write_prediction_columns
from .sdata import check_zarr_output, prediction_keys


def _predict_tile(model, data, tile: Tile, options: dict) -> dict:
    """Run ``model.predict`` on one tile; its core cells' prediction columns."""
    out = model.predict(data, copy=True, **options)
    key = options["key_added"] or model.setup["labels_key"]
    keys = prediction_keys(key)
    return {
        "obs": {k: out.obs[k].iloc[tile.core] for k in keys["obs"] if k in out.obs},
        "obsm": {k: np.asarray(out.obsm[k])[tile.core] for k in keys["obsm"] if k in out.obsm},
        "uns": {k: out.uns[k] for k in keys["uns"] if k in out.uns},
    }


class _Columns:
    """The prediction columns of every cell, filled in tile by tile (codes for text)."""

    def __init__(self, n: int):
        self.n = n
        self.obs: dict[str, np.ndarray] = {}
        self.categories: dict[str, dict] = {}
        self.categorical: dict[str, bool] = {}
        self.obsm: dict[str, np.ndarray] = {}
        self.uns: dict = {}

    def add(self, rows: np.ndarray, part: dict) -> None:
        for k, col in part["obs"].items():
            if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
                store = self.obs.setdefault(k, np.empty(self.n, dtype=col.dtype))
                store[rows] = col.to_numpy()
                continue
            self.categorical.setdefault(k, isinstance(col.dtype, pd.CategoricalDtype))
            cats = self.categories.setdefault(k, {})
            if isinstance(col.dtype, pd.CategoricalDtype):
                for c in col.cat.categories:  # the model's class order first
                    cats.setdefault(c, len(cats))
            codes, uniques = pd.factorize(col.to_numpy(), use_na_sentinel=True)
            lookup = np.array([cats.setdefault(u, len(cats)) for u in uniques] + [-1])
            store = self.obs.setdefault(k, np.full(self.n, -1, dtype=np.int32))
            store[rows] = lookup[codes]
        for k, arr in part["obsm"].items():
            store = self.obsm.setdefault(k, np.empty((self.n, arr.shape[1]), dtype=np.float32))
            store[rows] = arr
        for k, v in part["uns"].items():
            self.uns.setdefault(k, v)

    def frame_columns(self) -> dict[str, object]:
        out = {}
        for k, values in self.obs.items():
            if k not in self.categories:
                out[k] = values
                continue
            cats = list(self.categories[k])
            col = pd.Categorical.from_codes(values, categories=cats)
            out[k] = col if self.categorical[k] else np.asarray(col, dtype=object)
        return out

    def write_into(self, adata: AnnData) -> None:
        for k, v in self.frame_columns().items():
            adata.obs[k] = v
        for k, v in self.obsm.items():
            adata.obsm[k] = v
        for k, v in self.uns.items():
            adata.uns[k] = v


def predict_tiled(
    model,
    data: AnnData | str | os.PathLike,
    *,
    tile_size: float | None = None,
    halo: float | None = None,
    n_jobs: int | None = 1,
    client=None,
    key_added: str | None = None,
    copy: bool = False,
    sets: bool | None = None,
    alpha: float = 0.1,
    method: str = "lac",
    table_key: str | None = None,
    output: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> AnnData | None:
    """:meth:`SpatialRegionClassifier.predict` over square tiles of a large slide.

    The same keys as :meth:`~SpatialRegionClassifier.predict`, computed tile by tile: each
    tile's cells plus a halo of neighbours (the model's receptive field) are read, predicted
    and the tile's own cells kept, so memory depends on the tile, not the slide.

    Parameters
    ----------
    model
        A trained :class:`SpatialRegionClassifier`.
    data
        An AnnData (in memory, or backed: ``anndata.read_h5ad(path, backed='r')``, whose rows
        are read tile by tile), or the path of a SpatialData ``.zarr`` store whose table is
        read lazily and receives the prediction columns (atomically, one element at a time;
        ``X`` is not rewritten).
    tile_size
        Side of the square tiles, in coordinate units (default: about 200,000 cells a tile).
    halo
        Margin read around each tile (default: the model's receptive field, see
        :func:`scresidual.model.receptive_halo`).
    n_jobs
        Worker processes (joblib's loky) predicting tiles at once; ``-1``: one per CPU.
    client
        A :class:`dask.distributed.Client`: tiles run as tasks on its workers (which must
        see the ``.zarr``/``.h5ad`` file, e.g. on a shared file system). Same labels as
        in-process.
    key_added, sets, alpha, method
        As in :meth:`~SpatialRegionClassifier.predict`.
    copy
        For an AnnData: return a predicted copy (of a backed one: without ``X``, as
        :meth:`~SpatialRegionClassifier.predict` does).
    table_key
        For a ``.zarr`` store: the table (may be left out when there is only one).
    output
        For a ``.zarr`` store: a new ``.zarr`` path taking a copy with the predictions
        (default: the store itself).
    progress
        Show a progress bar over tiles.

    """
    if model.residual_model_ is None:
        raise ScResidualError("the model is not trained yet; call train() first.")
    if is_spatialdata(data):
        raise ScResidualError(
            "predict_tiled reads a .zarr store lazily: pass its path, or use model.predict(sdata) "
            "for a SpatialData in memory."
        )
    options = {"key_added": key_added, "sets": sets, "alpha": alpha, "method": method}
    tiling = {
        "tile_size": tile_size,
        "halo": halo,
        "n_jobs": n_jobs,
        "client": client,
        "progress": progress,
    }
    setup = model.setup
    if isinstance(data, (str, os.PathLike)):
        if not is_zarr(data):
            raise ScResidualError(
                f"{data}: pass a SpatialData .zarr store, or an AnnData (an .h5ad opened with "
                "anndata.read_h5ad(path, backed='r'))."
            )
        in_place = output is None or check_zarr_output(output, data)
        lazy = LazyTable.open(
            data,
            table_key=table_key,
            spatial_key=setup["spatial_key"],
            layer=setup["layer"],
            obs_columns=[c for c in [setup["library_key"]] if c is not None],
        )
        columns = _predict_columns(model, lazy, lazy.obs, lazy.coordinates, options, **tiling)
        write_prediction_columns(
            data,
            lazy.table,
            obs=columns.frame_columns(),
            obsm=columns.obsm,
            uns=columns.uns,
            copy_to=None if in_place else output,
        )
        return None
    if table_key is not None or output is not None:
        raise ScResidualError("table_key= and output= are for a .zarr store; drop them.")
    if not isinstance(data, AnnData):
        raise ScResidualError(
            f"data must be an AnnData or a .zarr path, got {type(data).__name__}."
        )
    if data.isbacked and not copy:
        raise ScResidualError(
            f"adata is backed by {data.filename}; pass copy=True for an in-memory AnnData with "
            "the predictions (X stays on disk)."
        )
    if setup["spatial_key"] not in data.obsm:
        raise ScResidualError(
            f"adata.obsm has no {setup['spatial_key']!r} coordinates to tile; add them."
        )
    source = (
        LazyTable.from_backed(data, spatial_key=setup["spatial_key"], layer=setup["layer"])
        if data.isbacked
        else data
    )
    xy = np.asarray(data.obsm[setup["spatial_key"]])
    columns = _predict_columns(model, source, data.obs, xy, options, **tiling)
    if copy:
        data = copy_to_memory(data)
    columns.write_into(data)
    return data if copy else None


def _predict_columns(
    model, source, obs, xy, options, *, tile_size, halo, n_jobs, client, progress
) -> _Columns:
    tiles = model_tiles(model, obs, xy, tile_size=tile_size, halo=halo)
    columns = _Columns(len(obs))
    run = run_tiles(_predict_tile, model, source, tiles, options, n_jobs=n_jobs, client=client)
    for tile, part in tqdm(run, total=len(tiles), desc="tiles", progress=progress):
        columns.add(tile.rows[tile.core], part)
    return columns
