"""Train on a slide larger than memory: the labelled cells' inputs computed tile by tile.

:meth:`SpatialRegionClassifier.train` computes the model's inputs (graph, source embeddings,
features, ring means) for every cell of the registered slide, then fits on the labelled
ones. Here the slide is read tile by tile (core + the model's receptive halo, by the tile
runner :func:`predict_tiled` uses too), so a labelled cell gets the inputs it has on the
whole slide; only the labelled core cells' inputs are kept, with each tile's moments of the
inputs over all its core cells. The moments, merged, are the standardisation the whole slide
would give, so the fit equals :meth:`~SpatialRegionClassifier.train`'s on the same slide.
"""

from __future__ import annotations

import os

import numpy as np
from anndata import AnnData

from .._errors import ScResidualError
from .._logging import tqdm
from .._validate import labelled_mask
from ..read.lazy import LazyTable
from ..read.sdata import is_spatialdata, is_zarr
from ._tile_runner import model_tiles, run_tiles


def _labelled_inputs(model, adata: AnnData, tile, options: dict) -> dict:
    """One tile's inputs of its labelled core cells, and the moments of all its core cells."""
    views = model.views(adata)
    keep = labelled_mask(adata.obs[options["labels_key"]].to_numpy())[tile.core]
    out = {"keep": keep, "views": {}, "moments": {}}
    for k, v in views.items():
        core = np.asarray(v[tile.core], dtype=np.float64)
        mean = core.mean(0)
        out["views"][k] = np.asarray(v[tile.core][keep], dtype=np.float32)
        out["moments"][k] = (len(core), mean, ((core - mean) ** 2).sum(0))
    return out


class _Moments:
    """Per view: count, mean and sum of squared deviations, merged tile by tile (Chan et al.)."""

    def __init__(self):
        self.parts: dict[str, tuple] = {}

    def add(self, moments: dict) -> None:
        for k, (n_b, mean_b, m2_b) in moments.items():
            if k not in self.parts:
                self.parts[k] = (n_b, mean_b, m2_b)
                continue
            n_a, mean_a, m2_a = self.parts[k]
            n = n_a + n_b
            delta = mean_b - mean_a
            self.parts[k] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n)

    def mean_std(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per view ``(mean, std)``, ``std`` with one degree of freedom (as torch's)."""
        return {k: (m, np.sqrt(m2 / max(n - 1, 1))) for k, (n, m, m2) in self.parts.items()}


def _lazy_source(model, data, table_key):
    """``(source, obs, coordinates)``: what tiles are read from, its labels and coordinates."""
    setup = model.setup
    columns = [c for c in (setup["labels_key"], setup["library_key"]) if c is not None]
    if isinstance(data, LazyTable):
        if table_key is not None:
            raise ScResidualError("table_key= is for a .zarr path; the table is already open.")
        return data, data.obs, data.coordinates
    if isinstance(data, (str, os.PathLike)) and is_zarr(data):
        lazy = LazyTable.open(
            data,
            table_key=table_key,
            spatial_key=setup["spatial_key"],
            layer=setup["layer"],
            obs_columns=columns,
        )
        return lazy, lazy.obs, lazy.coordinates
    if table_key is not None:
        raise ScResidualError("table_key= is for a .zarr store; drop it.")
    if not isinstance(data, AnnData):
        raise ScResidualError(
            f"data must be an AnnData or a .zarr path, got {type(data).__name__}; for a "
            "SpatialData in memory use model.train()."
        )
    if setup["spatial_key"] not in data.obsm:
        raise ScResidualError(
            f"adata.obsm has no {setup['spatial_key']!r} coordinates to tile; add them."
        )
    xy = np.asarray(data.obsm[setup["spatial_key"]])
    if data.isbacked:
        data = LazyTable.from_backed(data, spatial_key=setup["spatial_key"], layer=setup["layer"])
    return data, data.obs, xy


def train_tiled(
    model,
    data: AnnData | LazyTable | str | os.PathLike,
    *,
    tile_size: float | None = None,
    halo: float | None = None,
    n_jobs: int | None = 1,
    client=None,
    table_key: str | None = None,
    progress: bool | None = None,
    **train_options,
):
    """:meth:`SpatialRegionClassifier.train` on a slide read tile by tile.

    The model's inputs are computed over square tiles, each with a halo of neighbours (the
    model's receptive field), and kept for the labelled cells only; the model is then fitted
    on them, standardised as on the whole slide: the same model as
    :meth:`~SpatialRegionClassifier.train` on ``data`` in memory, in memory that depends on
    the tile and the number of labels, not on the slide. Set the model up on a sample of the
    slide first (the PCA is fitted there; :meth:`scresidual.read.lazy.LazyTable.sample` reads
    the rows the whole slide's setup would fit it on)::

        from scresidual.read.lazy import LazyTable

        sample = LazyTable.open("slide.zarr").sample(50_000)
        SpatialRegionClassifier.setup_anndata(sample, labels_key="region")
        model = SpatialRegionClassifier(sample, arm="scratch")
        train_tiled(model, "slide.zarr", n_jobs=2)
        predict_tiled(model, "slide.zarr", n_jobs=2)

    Parameters
    ----------
    model
        A :class:`SpatialRegionClassifier` (set up; fitted here). Its registered AnnData
        only supplied the setup: the labels, slides and cells come from ``data``.
    data
        The slide: the path of a SpatialData ``.zarr`` store (its table read lazily: the
        labels and coordinates in memory, the expression one tile at a time), or an AnnData
        (in memory, or backed: ``anndata.read_h5ad(path, backed='r')``), or a
        :class:`~scresidual.read.lazy.LazyTable` already open (with the labels column, and
        coordinates under the setup's ``spatial_key``).
    tile_size, halo, n_jobs, client
        As in :func:`predict_tiled`: the tiles, and where they run (processes, a Dask
        client). The fit itself runs here (its folds in ``n_jobs`` processes unless the
        training option ``n_jobs`` says otherwise).
    table_key
        For a ``.zarr`` store: the table (may be left out when there is only one).
    progress
        Show a progress bar over tiles, and the fit's.
    **train_options
        Training options of :meth:`~SpatialRegionClassifier.train` (``folds``,
        ``max_epochs``, ``accelerator``, …).

    Returns
    -------
    SpatialRegionClassifier
        ``model``, fitted.

    """
    if is_spatialdata(data):
        raise ScResidualError(
            "train_tiled reads a .zarr store lazily: pass its path, or use model.train() on a "
            "SpatialData in memory."
        )
    source, obs, xy = _lazy_source(model, data, table_key)
    labels_key = model.setup["labels_key"]
    if labels_key not in obs:
        raise ScResidualError(
            f"the slide has no obs column {labels_key!r} (the model's labels_key); add the "
            "labels to it, or set the model up with the column that holds them."
        )
    train_options.setdefault("n_jobs", n_jobs)
    core = model.training_core(obs, progress=progress, **train_options)
    tiles = model_tiles(model, obs, xy, tile_size=tile_size, halo=halo)
    options = {"labels_key": labels_key}
    rows, parts, moments = [], [], _Moments()
    run = run_tiles(_labelled_inputs, model, source, tiles, options, n_jobs=n_jobs, client=client)
    for tile, part in tqdm(run, total=len(tiles), desc="tiles", progress=progress):
        rows.append(tile.rows[tile.core][part["keep"]])
        parts.append(part["views"])
        moments.add(part["moments"])
    order = np.argsort(np.concatenate(rows), kind="stable")
    labelled = np.concatenate(rows)[order]
    views = {k: np.concatenate([p[k] for p in parts])[order] for k in parts[0]}
    del parts
    y = obs[labels_key].to_numpy()[labelled]
    library_key = model.setup["library_key"]
    groups = None if library_key is None else obs[library_key].to_numpy()[labelled]
    core.fit(views, y, groups=groups, moments=moments.mean_std())
    model.residual_model_ = core
    return model
