"""Square spatial tiles with a halo: the cells a tile labels and the neighbours they read.

A model's inputs for a cell depend on the cells within its receptive field: its graph
neighbours up to ``n_hops`` edges away, and the cells whose presence decides those edges.
Each tile therefore carries a halo of that width around its core square; the model runs on
core + halo and keeps the core's predictions, so no seam appears at tile borders. Every cell
is in exactly one core (``floor`` of its coordinate over the tile size, per slide).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._constants import LONG_LINK_PERCENTILE
from .._errors import ScResidualError
from .._validate import parse_graph

TILE_CELLS = 200_000
"""Cells per tile core on average when no tile size is given (bounds a tile's memory)."""

_QUERY_CHUNK = 1_000_000
_DELAUNAY_SAMPLE = 50_000


@dataclass(frozen=True)
class Tile:
    """One tile: ``rows`` (sorted) of its core and halo cells; ``core`` marks those it labels."""

    rows: np.ndarray
    core: np.ndarray


def _library_codes(n: int, libraries) -> np.ndarray:
    if libraries is None:
        return np.zeros(n, dtype=np.int64)
    return pd.factorize(np.asarray(libraries))[0]


def plan_tiles(xy, *, tile_size: float, halo: float, libraries=None) -> list[Tile]:
    """Square tiles of side ``tile_size`` over each slide, each with a ``halo``-wide margin.

    ``libraries`` (one value per cell, or ``None``) keeps slides apart: a tile holds cells of
    one slide only. Cells on a tile border belong to the tile on their upper side.
    """
    xy = np.asarray(xy, dtype=np.float64)[:, :2]
    if not (np.isfinite(tile_size) and tile_size > 0):
        raise ScResidualError(f"tile_size must be a positive number, got {tile_size!r}.")
    if not (np.isfinite(halo) and halo >= 0):
        raise ScResidualError(f"halo must be a number >= 0, got {halo!r}.")
    codes = _library_codes(len(xy), libraries)
    reach = int(np.ceil(halo / tile_size))
    tiles = []
    for lib in np.unique(codes):
        idx = np.flatnonzero(codes == lib)
        p = xy[idx]
        lo = p.min(0)
        cell = np.floor((p - lo) / tile_size).astype(np.int64)
        ny = int(cell[:, 1].max()) + 1
        key = cell[:, 0] * ny + cell[:, 1]
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        occupied, starts = np.unique(sorted_key, return_index=True)
        ends = np.append(starts[1:], len(order))
        span = {k: (s, e) for k, s, e in zip(occupied.tolist(), starts, ends, strict=True)}
        for k in occupied.tolist():
            ix, iy = divmod(k, ny)
            near = [
                span[(ix + dx) * ny + iy + dy]
                for dx in range(-reach, reach + 1)
                for dy in range(-reach, reach + 1)
                if 0 <= iy + dy < ny and (ix + dx) * ny + iy + dy in span
            ]
            cand = np.concatenate([order[s:e] for s, e in near])
            box_lo = lo + np.array([ix, iy]) * tile_size - halo
            box_hi = box_lo + tile_size + 2 * halo
            q = p[cand]
            inside = ((q >= box_lo) & (q <= box_hi)).all(1) | (key[cand] == k)
            local = np.sort(cand[inside])
            tiles.append(Tile(rows=idx[local], core=key[local] == k))
    return tiles


def _slides(xy: np.ndarray, libraries) -> list[np.ndarray]:
    codes = _library_codes(len(xy), libraries)
    return [np.flatnonzero(codes == c) for c in np.unique(codes)]


def _max_knn_distance(xy: np.ndarray, k: int) -> float:
    """The largest distance from a cell to its ``k``-th nearest other cell."""
    from scipy.spatial import cKDTree

    tree = cKDTree(xy)
    k = min(k, len(xy) - 1)
    if k < 1:
        return 0.0
    far = 0.0
    for s in range(0, len(xy), _QUERY_CHUNK):
        d, _ = tree.query(xy[s : s + _QUERY_CHUNK], k=k + 1, workers=-1)
        far = max(far, float(d[:, -1].max()))
    return far


def _delaunay_link(xy: np.ndarray) -> float:
    """The longest Delaunay edge kept (the long-link percentile), on a central sample."""
    from scipy.spatial import Delaunay, cKDTree

    if len(xy) > _DELAUNAY_SAMPLE:
        centre = np.median(xy, axis=0)
        _, near = cKDTree(xy).query(centre, k=_DELAUNAY_SAMPLE)
        xy = xy[np.sort(near)]
    if len(xy) < 3:
        return 0.0
    tri = Delaunay(xy)
    s = tri.simplices
    edges = np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [0, 2]]])
    lengths = np.linalg.norm(xy[edges[:, 0]] - xy[edges[:, 1]], axis=1)
    return float(np.percentile(lengths, LONG_LINK_PERCENTILE))


def receptive_halo(xy, *, graph: str, n_hops: int, libraries=None) -> float:
    """The halo width that gives core cells the same inputs as on the whole slide.

    ``knn:K``: ``n_hops`` times the largest distance from a cell to its K-th neighbour (exact:
    every edge within ``n_hops - 1`` hops of a core cell is then built from all its
    candidates). ``radius:R``: ``n_hops × R``. ``delaunay``: ``n_hops + 1`` times the longest
    kept edge, measured on a sample of each slide's centre (the triangulation near a cell
    depends on cells about one edge beyond it; the long-link cut is a percentile of the
    tile's edges, so a few edges near that length may differ from the whole slide's).
    """
    method, value = parse_graph(graph)
    if method == "none":
        return 0.0
    xy = np.asarray(xy, dtype=np.float64)
    if xy.shape[1] > 2 and np.ptp(xy[:, 2:], axis=0).max() == 0:
        xy = xy[:, :2]
    if method == "radius":
        return n_hops * float(value) * (1 + 1e-9)
    slides = _slides(xy, libraries)
    if method == "knn":
        far = max(_max_knn_distance(xy[rows], int(value)) for rows in slides)
        return n_hops * far * (1 + 1e-9)
    link = max(_delaunay_link(xy[rows, :2]) for rows in slides)
    return (n_hops + 1) * link


def default_tile_size(xy, *, halo: float, libraries=None, cells: int = TILE_CELLS) -> float:
    """A side giving about ``cells`` cells per tile core, and at least four halos wide."""
    xy = np.asarray(xy, dtype=np.float64)[:, :2]
    area = sum(float(np.prod(np.ptp(xy[rows], axis=0))) for rows in _slides(xy, libraries))
    side = np.sqrt(max(area, 1e-12) * cells / len(xy))
    return float(max(side, 4 * halo, 1e-9))
