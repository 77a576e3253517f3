"""Spatial neighbour graphs (squidpy's builders) and the neighbour-ring means the encoders read."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import CONNECTIVITIES_KEY, DISTANCES_KEY, LONG_LINK_PERCENTILE, SPATIAL_KEY
from .._errors import ScResidualError, first_line
from .._validate import check_cells, check_library_ids, check_spatial, parse_graph

logger = logging.getLogger(__name__)


def spatial_graph(
    adata: AnnData,
    *,
    graph: str = "knn:6",
    spatial_key: str = SPATIAL_KEY,
    library_key: str | None = None,
    copy: bool = False,
) -> tuple[sp.csr_matrix, sp.csr_matrix] | None:
    """Build the spatial neighbour graph with squidpy's builders, one graph per slide.

    Writes ``obsp['spatial_connectivities']`` and ``obsp['spatial_distances']``, or returns
    them with ``copy=True``, as :func:`squidpy.gr.spatial_neighbors` does.

    Parameters
    ----------
    adata
        Annotated data with coordinates in ``obsm[spatial_key]``; k-NN and radius graphs use
        z where it varies, so cells of different z-planes are not taken for neighbours.
    graph
        ``'knn:K'`` (K capped at the smallest slide's size - 1), ``'radius:R'`` or
        ``'delaunay'`` (less its longest 1% of edges, across gaps or along the hull, as
        CellCharter does).
    spatial_key
        ``obsm`` key of the coordinates.
    library_key
        ``obs`` column naming each cell's slide: no edge crosses slides, and a cell alone on
        its slide gets no neighbours.
    copy
        Return ``(connectivities, distances)`` and leave ``adata`` untouched.

    """
    with warnings.catch_warnings():
        # docrep, squidpy's docstring tool, warns about squidpy's own docstrings at import.
        warnings.filterwarnings("ignore", ".*is not a valid key", SyntaxWarning)
        from squidpy.gr.neighbors import DelaunayBuilder, KNNBuilder, RadiusBuilder

    method, value = parse_graph(graph)
    if method == "none":
        raise ScResidualError(
            "graph 'none' builds no graph; pass 'knn:K', 'radius:R' or 'delaunay'."
        )
    check_cells(adata, 1, "a spatial graph")
    xy = check_spatial(adata, spatial_key)
    if xy.shape[1] > 2 and np.ptp(xy[:, 2:], axis=0).max() == 0:
        xy = xy[:, :2]  # a constant z adds nothing
    if method == "delaunay" and xy.shape[1] > 2:  # squidpy would triangulate in tetrahedra
        raise ScResidualError(
            "the coordinates are 3-D (z varies) but a Delaunay graph is 2-D; use --graph "
            "knn:K or radius:R, which use all three coordinates."
        )
    if library_key is not None:
        check_library_ids(adata, library_key)
    ids = np.zeros(len(xy)) if library_key is None else adata.obs[library_key].astype(str)
    slides = [cells.to_numpy() for cells in pd.RangeIndex(len(xy)).groupby(ids).values()]
    sizes = np.array([len(cells) for cells in slides])
    if (sizes == 1).any():
        logger.warning(
            "%d cell(s) are alone on their slide and get no spatial neighbours.", sum(sizes == 1)
        )
    if method == "knn":
        builder = KNNBuilder(n_neighs=int(min([value, *sizes[sizes > 1] - 1])))
    elif method == "radius":
        builder = RadiusBuilder(radius=value)
    else:
        builder = DelaunayBuilder(percentile=LONG_LINK_PERCENTILE)
    alone = sp.csr_matrix((1, 1), dtype=np.float32)
    try:
        graphs = [builder.build(xy[c]) if len(c) > 1 else (alone, alone) for c in slides]
    except Exception as err:  # qhull/sklearn errors on degenerate layouts (many-line dumps)
        raise ScResidualError(
            f"could not build a {graph} graph ({type(err).__name__}: {first_line(err, 120)}); "
            "check that the cells of each slide do not all lie on one line or at one point, "
            "or use 'knn:K'."
        ) from err
    conn, dist = (m.tocsr() for m in builder.combine(graphs, np.concatenate(slides)))
    if copy:
        return conn, dist
    adata.obsp[CONNECTIVITIES_KEY], adata.obsp[DISTANCES_KEY] = conn, dist
    return None


def at_most_one_edge(conn: sp.spmatrix) -> sp.csr_matrix:
    """Boolean ``(n, n)``: each cell, and the cells one edge away (the graph with self-loops)."""
    return sp.csr_matrix(sp.csr_matrix(conn, dtype=bool) + sp.identity(conn.shape[0], dtype=bool))


def neighbourhood_rings(X: np.ndarray, conn: sp.spmatrix, n_rings: int = 3) -> np.ndarray:
    """Each cell's features, then their means over the cells exactly 1 … ``n_rings`` edges away.

    Rings (CellCharter's neighbourhood layers), not powers of the averaging operator
    (``Â^k X``, which blur towards the inner layers), so each layer adds what the inner ones
    lack. Ring ``k`` is the sparse ball of radius ``k`` less that of radius ``k - 1``:
    nothing n×n is dense. An empty ring (an isolated cell, a small slide's edge) repeats the
    previous layer. Returns ``(n, n_rings + 1, …)``.
    """
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    if conn.shape != (n, n):
        raise ScResidualError(
            f"the graph has shape {conn.shape} but there are {n} cells; rebuild the graph "
            "on the same AnnData."
        )
    X2 = X.reshape(n, -1)
    out = np.empty((n, n_rings + 1, X2.shape[1]), dtype=np.float32)
    out[:, 0] = X2
    step = at_most_one_edge(conn)
    inner = sp.identity(n, dtype=bool, format="csr")  # at most k - 1 edges away
    for k in range(1, n_rings + 1):
        ball = (inner @ step).tocsr()  # at most k edges away
        ring = ball > inner  # exactly k edges away
        size = np.asarray(ring.sum(1)).ravel()
        mean = sp.diags(1.0 / np.maximum(size, 1)) @ ring @ X2
        out[:, k] = np.where(size[:, None] > 0, mean, out[:, k - 1])
        inner = ball
    return out.reshape((n, n_rings + 1, *X.shape[1:]))


def neighbourhood_gradients(
    X: np.ndarray, xy: np.ndarray, conn: sp.spmatrix, n_rings: int = 2
) -> np.ndarray:
    """Each cell's azimuthal gradient of ``X``: BANKSY's first-order AGF, on the graph.

    For a cell ``i`` and the cells ``j`` at most ``n_rings`` edges away (weights ``1 / m``
    over its ``m`` such cells), ``|Σ_j w_ij (x_j - x_i) exp(iθ_ij)|`` per feature, with
    ``θ_ij`` the direction from ``i`` to ``j`` in the first two coordinates: how strongly,
    and in no particular direction, a feature changes across the cell's neighbourhood. A
    mean (a ring) cannot say this: a cell on a boundary and one inside a mixed region can
    have the same neighbour mean. Returns ``(n, d)``; an isolated cell gets zeros.
    """
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    n = len(X)
    if conn.shape != (n, n) or len(xy) != n:
        raise ScResidualError(
            f"the graph has shape {conn.shape} and there are {len(xy)} coordinates for {n} "
            "cells; rebuild the graph on the same AnnData."
        )
    step = at_most_one_edge(conn)
    ball = sp.identity(n, dtype=bool, format="csr")
    for _ in range(n_rings):
        ball = (ball @ step).tocsr()
    ball = (ball.astype(np.float32) - sp.identity(n, dtype=np.float32, format="csr")).tocsr()
    ball.eliminate_zeros()
    rows = np.repeat(np.arange(n), np.diff(ball.indptr))
    xy = np.asarray(xy, dtype=np.float64)[:, :2]
    d = xy[ball.indices] - xy[rows]
    norm = np.hypot(d[:, 0], d[:, 1])
    norm[norm == 0] = 1.0  # a neighbour at the same spot adds no direction
    m = np.maximum(np.diff(ball.indptr), 1)[rows]
    parts = []
    for trig in (d[:, 0] / norm / m, d[:, 1] / norm / m):  # cos θ / m, sin θ / m
        W = sp.csr_matrix((trig.astype(np.float32), ball.indices, ball.indptr), shape=(n, n))
        parts.append(W @ X - np.asarray(W.sum(1)).reshape(-1, 1) * X)
    return np.hypot(*parts).astype(np.float32)
