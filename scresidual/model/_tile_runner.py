"""The one tile runner of the tiled fit and predict: plan tiles, read each, run it anywhere.

A task is a module-level function ``task(model, adata, tile, options) -> result`` (so that
worker processes and Dask workers can unpickle it); the runner plans the tiles (core + the
model's receptive halo, :mod:`scresidual.model._tiles`), hands each tile to the task in
this process, in joblib's loky processes (``n_jobs``) or on a Dask ``client``, and yields
``(tile, result)`` as tiles finish, in any order. A tile of a lazily read table travels as
rows to read (:class:`~scresidual.read.lazy.LazyRows`): the worker reads it from disk.
"""

from __future__ import annotations

import copy as _copy
import itertools
from collections.abc import Callable, Iterator

from ..read.lazy import LazyRows, LazyTable
from ._tiles import Tile, default_tile_size, plan_tiles, receptive_halo


def model_tiles(model, obs, xy, *, tile_size: float | None, halo: float | None) -> list[Tile]:
    """The tiles of a slide for ``model``: its receptive field as halo unless given."""
    setup = model.setup
    library_key = setup["library_key"]
    libraries = obs[library_key].to_numpy() if library_key in obs else None
    if halo is None:
        halo = receptive_halo(xy, graph=setup["graph"], n_hops=setup["n_hops"], libraries=libraries)
    if tile_size is None:
        tile_size = default_tile_size(xy, halo=halo, libraries=libraries)
    return plan_tiles(xy, tile_size=tile_size, halo=halo, libraries=libraries)


def _tile_input(data, tile: Tile, spatial_key: str):
    """What a worker needs for ``tile``: the rows to read from disk, or the tile in memory."""
    if isinstance(data, LazyTable):
        return data.rows(tile.rows, spatial_key=spatial_key)
    return data[tile.rows].copy()


def _tile_task(task: Callable, model, data, tile: Tile, options: dict) -> tuple[Tile, object]:
    if isinstance(data, LazyRows):
        data = data.to_memory()
    return tile, task(model, data, tile, options)


def _light(model):
    """The model without its training data (shipped to every worker)."""
    light = _copy.copy(model)
    light.adata = None
    return light


def run_tiles(
    task: Callable,
    model,
    data,
    tiles: list[Tile],
    options: dict,
    *,
    n_jobs: int | None,
    client,
) -> Iterator[tuple[Tile, object]]:
    """Yield ``(tile, task(model, tile's AnnData, tile, options))`` for every tile."""
    model = _light(model)
    key = model.setup["spatial_key"]
    jobs = ((t, _tile_input(data, t, key)) for t in tiles)
    if client is not None:
        results = _run_dask(task, model, jobs, options, client)
    elif n_jobs in (None, 1):
        results = (_tile_task(task, model, d, t, options) for t, d in jobs)
    else:
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")
        results = parallel(delayed(_tile_task)(task, model, d, t, options) for t, d in jobs)
    yield from results


def _run_dask(task, model, jobs, options, client) -> Iterator[tuple[Tile, object]]:
    """Tiles as tasks of a :class:`dask.distributed.Client`, two in flight per worker."""
    from distributed import as_completed

    model_f = client.scatter(model, broadcast=True)
    in_flight = 2 * max(len(client.scheduler_info().get("workers", {})), 1)
    running = as_completed()

    def submit(t, d):
        running.add(client.submit(_tile_task, task, model_f, d, t, options, pure=False))

    for t, d in itertools.islice(jobs, in_flight):
        submit(t, d)
    for fut in running:
        yield fut.result()
        fut.release()
        nxt = next(jobs, None)
        if nxt is not None:
            submit(*nxt)
