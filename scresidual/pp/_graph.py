"""Spatial neighbour graphs (squidpy) and the neighbourhood features the graph encoder reads."""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import CONNECTIVITIES_KEY, DISTANCES_KEY, SPATIAL_KEY
from .._errors import ScResidualError
from .._logging import quiet_loggers
from .._validate import check_library_ids, check_spatial

logger = logging.getLogger(__name__)

GRAPH_SPECS = "'knn:K', 'radius:R', 'delaunay' or 'none'"

LONG_LINK_PERCENTILE = 99.0
"""Delaunay edges longer than this percentile of all edge lengths are dropped."""


def parse_graph(spec: str | None) -> tuple[str, float | None]:
    """Parse ``'knn:6'``, ``'radius:150'``, ``'delaunay'`` or ``'none'`` into (method, value)."""
    if spec is None or str(spec).lower() == "none":
        return "none", None
    m = re.fullmatch(r"(knn|radius)(?::([0-9.]+))?|(delaunay)", str(spec).strip().lower())
    if not m:
        raise ScResidualError(f"unknown graph {spec!r}; use {GRAPH_SPECS}.")
    if m.group(3):
        return "delaunay", None
    method, value = m.group(1), m.group(2)
    if method == "radius" and value is None:
        raise ScResidualError("graph 'radius' needs a distance, e.g. 'radius:150'.")
    value = float(value) if value is not None else 6.0
    if method == "knn" and (value < 1 or value != int(value)):
        raise ScResidualError(f"knn needs a positive integer neighbour count, got {value}.")
    return method, value


def graph_coordinates(xy: np.ndarray, method: str) -> np.ndarray:
    """The coordinates the graph is built on: x, y and (if it varies) z.

    k-NN and radius graphs use 3-D distances, so cells of different z-planes are not taken
    for neighbours; squidpy would triangulate 3-D points in tetrahedra, so Delaunay refuses z.
    """
    if xy.shape[1] > 2 and np.ptp(xy[:, 2:], axis=0).max(initial=0) == 0:
        xy = xy[:, :2]  # a constant z adds nothing
    if method == "delaunay" and xy.shape[1] > 2:
        raise ScResidualError(
            "the coordinates are 3-D (z varies) but a Delaunay graph is 2-D; use --graph "
            "knn:K or radius:R, which use all three coordinates."
        )
    return xy


def spatial_graph_matrix(
    adata: AnnData,
    graph: str = "knn:6",
    *,
    spatial_key: str = SPATIAL_KEY,
    library_key: str | None = None,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Build the spatial neighbour graph with squidpy without touching ``adata``.

    Returns ``(connectivities, distances)`` as sparse matrices; with ``library_key`` each
    slide gets its own graph and no edge crosses slides.
    """
    with warnings.catch_warnings():
        # docrep, squidpy's docstring tool, warns about squidpy's own docstrings at import.
        warnings.filterwarnings("ignore", ".*is not a valid key", SyntaxWarning)
        import squidpy as sq  # heavy import, only when a graph is needed

    method, value = parse_graph(graph)
    if method == "none":
        raise ScResidualError(f"no graph requested; pass one of {GRAPH_SPECS}.")
    xy = check_spatial(adata, spatial_key)
    n = adata.n_obs
    if n == 0:
        raise ScResidualError("adata has no cells; a spatial graph needs at least 1 cell.")
    slides = None
    if library_key is not None:
        check_library_ids(adata, library_key)
        slides = pd.Categorical(adata.obs[library_key].astype(str).to_numpy())
    xy = graph_coordinates(xy, method)
    # A cell alone on its slide (or a one-cell AnnData) has no neighbours: it stays isolated
    # and the mean aggregation averages it over itself only (self loop).
    slide = slides.codes if slides is not None else np.zeros(n, dtype=int)
    sizes = np.bincount(slide)
    keep = np.flatnonzero(sizes[slide] >= 2)
    if len(keep) < n:
        logger.warning(
            "%d cell(s) are alone on their slide and get no spatial neighbours.", n - len(keep)
        )
    if len(keep) == 0:
        empty = sp.csr_matrix((n, n), dtype=np.float32)
        return empty, empty.copy()
    obs = pd.DataFrame(index=pd.RangeIndex(len(keep)).astype(str))
    if slides is not None:
        obs[library_key] = slides[keep].remove_unused_categories()
    shell = AnnData(obs=obs, obsm={SPATIAL_KEY: xy[keep]})
    kwargs: dict = {"library_key": library_key, "copy": True}
    if method == "knn":
        kwargs["n_neighs"] = int(min(value, sizes[sizes >= 2].min() - 1))
    elif method == "radius":
        kwargs["radius"] = value
    else:
        # Triangles across gaps and along the hull make edges much longer than a cell's
        # real neighbours; drop the longest 1% (CellCharter's remove_long_links does the same).
        kwargs["percentile"] = LONG_LINK_PERCENTILE
    build = getattr(sq.gr, f"spatial_neighbors_{method}")
    try:
        loggers = ("spatialdata", "spatialdata._logging", "squidpy")  # the 2nd has its own level
        with quiet_loggers(*loggers):
            conn, dist = build(shell, **kwargs)
    except Exception as err:  # qhull/sklearn errors on degenerate layouts (many-line dumps)
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise ScResidualError(
            f"could not build a {graph} graph ({type(err).__name__}: {first}); check that the "
            "cells of each slide do not all lie on one line or at one point, or use 'knn:K'."
        ) from err
    conn, dist = conn.tocsr(), dist.tocsr()
    if len(keep) < n:  # put the isolated cells back (empty rows and columns)
        ones = np.ones(len(keep), dtype=np.float32)
        embed = sp.csr_matrix((ones, (keep, np.arange(len(keep)))), shape=(n, len(keep)))
        conn = (embed @ conn @ embed.T).tocsr()
        dist = (embed @ dist @ embed.T).tocsr()
    return conn, dist


def spatial_graph(
    adata: AnnData,
    *,
    graph: str = "knn:6",
    spatial_key: str = SPATIAL_KEY,
    library_key: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Compute the spatial neighbour graph, squidpy-style.

    Writes ``obsp['spatial_connectivities']`` and ``obsp['spatial_distances']``.

    Parameters
    ----------
    adata
        Annotated data with coordinates in ``obsm[spatial_key]``.
    graph
        ``'knn:K'`` (K nearest neighbours), ``'radius:R'`` (all cells within R) or
        ``'delaunay'`` (Delaunay triangulation).
    spatial_key
        ``obsm`` key of the coordinates.
    library_key
        ``obs`` column naming the slide of each cell; one graph per slide.
    copy
        Return a copy instead of writing into ``adata``.

    """
    conn, dist = spatial_graph_matrix(
        adata, graph, spatial_key=spatial_key, library_key=library_key
    )
    adata = adata.copy() if copy else adata
    adata.obsp[CONNECTIVITIES_KEY] = conn
    adata.obsp[DISTANCES_KEY] = dist
    return adata if copy else None


def neighbourhood_rings(X: np.ndarray, conn: sp.spmatrix, n_rings: int = 3) -> np.ndarray:
    """Stack a cell's own features and their means over its 1st, 2nd, … neighbour *rings*.

    Ring ``k`` holds the cells exactly ``k`` edges away on the spatial graph (as in
    CellCharter's neighbourhood layers), so each layer adds information the previous ones do
    not already hold; powers of the averaging operator (``Â^k X``) instead blur towards the
    inner layers. Returns ``(n, n_rings + 1, …)``. Each ring is a few sparse products (time
    and memory linear in the number of ring members); nothing of size n×n is formed densely.
    A cell with an empty ring (isolated, or at a small slide's edge) gets the previous layer.
    """
    X = np.asarray(X, dtype=np.float32)
    if conn.shape != (len(X), len(X)):
        raise ScResidualError(
            f"the graph has shape {conn.shape} but there are {len(X)} cells; rebuild the graph "
            "on the same AnnData."
        )
    adj = sp.csr_matrix(conn, dtype=bool)
    adj.setdiag(False)
    adj.eliminate_zeros()
    X2 = X.reshape(len(X), -1)
    out = np.empty((len(X), n_rings + 1, X2.shape[1]), dtype=np.float32)
    out[:, 0] = X2
    visited = (adj + sp.identity(len(X), dtype=bool, format="csr")).astype(bool)
    ring = adj
    for k in range(1, n_rings + 1):
        if k > 1:
            reach = (ring.astype(np.float32) @ adj.astype(np.float32)).astype(bool)
            ring = (reach > visited).tocsr()  # reached now, never before
            ring.eliminate_zeros()
            visited = visited + ring
        size = np.asarray(ring.sum(1)).ravel()
        mean = sp.diags(1.0 / np.maximum(size, 1)).dot(ring.astype(np.float32)) @ X2
        out[:, k] = np.where(size[:, None] > 0, mean, out[:, k - 1])
    return out.reshape((len(X), n_rings + 1, *X.shape[1:]))


def neighbourhood_features(
    adata: AnnData,
    *,
    use_rep: str = "X_pca",
    n_hops: int = 2,
    connectivity_key: str = CONNECTIVITIES_KEY,
    key_added: str = "X_hops",
    copy: bool = False,
) -> AnnData | None:
    """Average ``obsm[use_rep]`` over 1…``n_hops`` neighbour rings of the spatial graph.

    Writes ``obsm[key_added]`` of shape ``(n_obs, (n_hops + 1) * d)`` (own features first),
    the input of the spatial residual encoders (see :func:`neighbourhood_rings`).
    """
    from .._validate import check_obsm_key

    check_obsm_key(adata, use_rep)
    if connectivity_key not in adata.obsp:
        raise ScResidualError(
            f"no graph in adata.obsp[{connectivity_key!r}]; run scresidual.pp.spatial_graph first."
        )
    H = neighbourhood_rings(np.asarray(adata.obsm[use_rep]), adata.obsp[connectivity_key], n_hops)
    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = H.reshape(adata.n_obs, -1)
    return adata if copy else None
