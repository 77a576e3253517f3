"""Generated slides for the scaling benchmarks: in memory, or streamed into a ``.zarr`` store.

Sparse Poisson counts over ``n_genes`` genes whose means depend on a cell type; the cell-type
composition depends on a spatially smooth region map (warped Voronoi cells); a fraction of
the cells carry their region label. :func:`make_slide` builds the slide in memory;
:func:`write_slide_store` writes the same slide as a SpatialData ``.zarr`` (a table
annotating one circle per cell) with the expression appended block by block, so a 10^7-cell
slide is written without ever holding its matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

N_REGIONS = 6
N_TYPES = 8
CHUNK = 100_000
"""Cells drawn per block (the random stream depends on it, not on how blocks are written)."""
FOV = 1000.0
"""Side of the fields of view (~10,000 cells) whose order the cloud's rows follow."""
APPEND_BLOCKS = 10
"""Blocks stacked per append to the store's expression matrix."""


def _layout(n: int, seed: int, layout: str, labelled: float, chunk: int):
    """Generator, coordinates, regions and the labelled mask of a slide."""
    rng = np.random.default_rng(seed)
    side = np.sqrt(n) * 10.0
    if layout == "grid":
        per_row = int(np.ceil(np.sqrt(n)))
        i = np.arange(n)
        xy = (np.stack([i % per_row, i // per_row], 1) * 10.0).astype(np.float32)
    else:
        xy = rng.uniform(0, side, size=(n, 2)).astype(np.float32)
        # rows in field-of-view order, as a Xenium run numbers its cells (a table in random
        # order makes every tile read chunks of the whole matrix)
        fov = np.floor(xy / FOV).astype(np.int64)
        xy = xy[np.lexsort((fov[:, 0], fov[:, 1]))]
    centres = rng.uniform(0, side, size=(N_REGIONS, 2))
    wave = side / 4
    region = np.empty(n, dtype=np.int8)
    for s in range(0, n, chunk):
        p = xy[s : s + chunk]
        warped = p + 0.15 * side * np.sin(p[:, ::-1] / wave * 2 * np.pi)
        region[s : s + chunk] = ((warped[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    mask = rng.random(n) < labelled
    return rng, xy, region, mask


def _count_blocks(rng, region: np.ndarray, n_genes: int, chunk: int) -> Iterator:
    """CSR float32 count blocks of ``chunk`` cells, in row order."""
    import scipy.sparse as sp

    prng = np.random.default_rng(1234)  # the biology is the same on every slide
    composition = prng.dirichlet(np.full(N_TYPES, 0.5), size=N_REGIONS)
    base = prng.lognormal(-1.6, 0.8, size=n_genes)
    profiles = np.tile(base, (N_TYPES, 1))
    for t in range(N_TYPES):
        markers = prng.choice(n_genes, 8, replace=False)
        profiles[t, markers] *= prng.uniform(3, 8, size=8)
    regional = np.ones((N_REGIONS, n_genes))
    for r in range(N_REGIONS):
        regional[r, prng.choice(n_genes, 4, replace=False)] *= 1.6
    for s in range(0, len(region), chunk):
        reg = region[s : s + chunk]
        u = rng.random(len(reg))[:, None]
        ctype = (u > composition[reg].cumsum(1)).sum(1)
        lib = rng.lognormal(0.0, 0.3, size=len(reg))[:, None]
        counts = rng.poisson(lib * profiles[ctype] * regional[reg]).astype(np.float32)
        yield sp.csr_matrix(counts)


def _obs(region: np.ndarray, mask: np.ndarray):
    import pandas as pd

    names = [f"r{r}" for r in range(N_REGIONS)]
    truth = pd.Categorical.from_codes(region, names)
    labels = pd.Categorical.from_codes(np.where(mask, region, -1), names)  # -1: missing
    index = pd.Index(np.char.add("c", np.arange(len(region)).astype(str)).astype(object))
    return pd.DataFrame({"region": labels, "truth": truth}, index=index)


def make_slide(
    n: int,
    n_genes: int = 100,
    seed: int = 0,
    chunk: int = CHUNK,
    layout: str = "cloud",
    labelled: float = 0.1,
):
    """A generated slide of ``n`` cells: counts (CSR), coordinates, regions, some labelled.

    ``layout``: ``'cloud'`` (Xenium-like: cells uniformly scattered, rows ordered by field of
    view) or ``'grid'`` (Visium HD-like: square bins on a regular grid, row by row), both ~10
    units apart whatever the size.
    ``labelled``: the fraction of cells, drawn at random, whose ``obs['region']`` is set.
    """
    import anndata as ad
    import scipy.sparse as sp

    rng, xy, region, mask = _layout(n, seed, layout, labelled, chunk)
    X = sp.vstack(list(_count_blocks(rng, region, n_genes, chunk)), format="csr")
    adata = ad.AnnData(X=X, obs=_obs(region, mask), obsm={"spatial": xy})
    adata.var_names = [f"g{g}" for g in range(n_genes)]
    return adata


def write_slide_store(
    path: Path,
    n: int,
    n_genes: int = 100,
    seed: int = 0,
    layout: str = "cloud",
    labelled: float = 0.1,
    chunk: int = CHUNK,
) -> None:
    """:func:`make_slide`'s slide as a SpatialData ``.zarr``: a table annotating circles.

    The table is written without ``X``, which is then appended to it block by block
    (anndata's sparse dataset ``append``): memory holds the coordinates and ``obs``, not
    the matrix.
    """
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    import scipy.sparse as sp
    import spatialdata
    import zarr
    from anndata.io import sparse_dataset, write_elem
    from spatialdata.models import ShapesModel, TableModel

    rng, xy, region, mask = _layout(n, seed, layout, labelled, chunk)
    obs = _obs(region, mask)
    obs["cells"] = pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), ["cells"])
    obs["instance"] = np.arange(n)
    var = pd.DataFrame(index=[f"g{g}" for g in range(n_genes)])
    table = ad.AnnData(obs=obs, var=var, obsm={"spatial": xy})
    table = TableModel.parse(table, region="cells", region_key="cells", instance_key="instance")
    circles = gpd.GeoDataFrame(
        {"radius": np.full(n, 5.0)},
        geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]),
        index=np.arange(n),
    )
    sdata = spatialdata.SpatialData(
        shapes={"cells": ShapesModel.parse(circles)}, tables={"table": table}
    )
    sdata.write(path)
    del circles, sdata, table, obs
    group = zarr.open_group(Path(path) / "tables" / "table", mode="r+")
    blocks = _count_blocks(rng, region, n_genes, chunk)
    matrix = None
    while True:
        part = [b for _, b in zip(range(APPEND_BLOCKS), blocks, strict=False)]
        if not part:
            break
        X = sp.vstack(part, format="csr")
        if matrix is None:
            write_elem(group, "X", X)
            matrix = sparse_dataset(group["X"])
        else:
            matrix.append(X)
    spatialdata.read_zarr(path, selection=()).write_consolidated_metadata()
