"""Spatial neighbour graphs (squidpy) and the neighbourhood features the graph encoder reads."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import CONNECTIVITIES_KEY, DISTANCES_KEY, SPATIAL_KEY
from .._errors import ScResidualError, first_line
from .._validate import GRAPH_SPECS, check_library_ids, check_obsm_key, check_spatial, parse_graph

logger = logging.getLogger(__name__)

LONG_LINK_PERCENTILE = 99.0
"""Delaunay edges longer than this percentile of all edge lengths are dropped."""


def spatial_graph_matrix(
    adata: AnnData,
    graph: str = "knn:6",
    *,
    spatial_key: str = SPATIAL_KEY,
    library_key: str | None = None,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Build the spatial neighbour graph with squidpy without touching ``adata``.

    Returns ``(connectivities, distances)`` as sparse matrices; with ``library_key`` each
    slide gets its own graph and no edge crosses slides. A cell alone on its slide gets no
    neighbours (the mean aggregation averages it over itself). k-NN and radius graphs use
    3-D distances if z varies, so cells of different z-planes are not taken for neighbours.
    """
    with warnings.catch_warnings():
        # docrep, squidpy's docstring tool, warns about squidpy's own docstrings at import.
        warnings.filterwarnings("ignore", ".*is not a valid key", SyntaxWarning)
        from squidpy.gr.neighbors import DelaunayBuilder, KNNBuilder, RadiusBuilder

    method, value = parse_graph(graph)
    if method == "none":
        raise ScResidualError(f"no graph requested; pass one of {GRAPH_SPECS}.")
    xy = check_spatial(adata, spatial_key)
    if adata.n_obs == 0:
        raise ScResidualError("adata has no cells; a spatial graph needs at least 1 cell.")
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
    if method == "knn":  # the smallest slide has size - 1 neighbours to offer
        builder = KNNBuilder(n_neighs=int(min([value, *sizes[sizes > 1] - 1])))
    elif method == "radius":
        builder = RadiusBuilder(radius=value)
    else:  # drop the longest 1% of edges (across gaps, along the hull), as CellCharter does
        builder = DelaunayBuilder(percentile=LONG_LINK_PERCENTILE)
    alone = sp.csr_matrix((1, 1), dtype=np.float32)
    try:
        graphs = [
            builder.build(xy[cells]) if len(cells) > 1 else (alone, alone) for cells in slides
        ]
    except Exception as err:  # qhull/sklearn errors on degenerate layouts (many-line dumps)
        raise ScResidualError(
            f"could not build a {graph} graph ({type(err).__name__}: {first_line(err, 120)}); "
            "check that the cells of each slide do not all lie on one line or at one point, "
            "or use 'knn:K'."
        ) from err
    conn, dist = builder.combine(graphs, np.concatenate(slides))
    return conn.tocsr(), dist.tocsr()


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
    inner layers. Returns ``(n, n_rings + 1, …)``. Ring ``k`` is the ball of radius ``k`` (a
    sparse product) less the ball of radius ``k - 1``; nothing of size n×n is formed densely.
    A cell with an empty ring (isolated, or at a small slide's edge) gets the previous layer.
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
    step = sp.csr_matrix(conn, dtype=bool) + sp.identity(n, dtype=bool)  # at most 1 edge away
    inner = sp.identity(n, dtype=bool, format="csr")  # at most k - 1 edges away
    for k in range(1, n_rings + 1):
        ball = (inner @ step).tocsr()  # at most k edges away
        ring = ball > inner  # exactly k edges away
        size = np.asarray(ring.sum(1)).ravel()
        mean = sp.diags(1.0 / np.maximum(size, 1)) @ ring @ X2
        out[:, k] = np.where(size[:, None] > 0, mean, out[:, k - 1])
        inner = ball
    return out.reshape((n, n_rings + 1, *X.shape[1:]))


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
    check_obsm_key(adata, use_rep)
    if connectivity_key not in adata.obsp:
        raise ScResidualError(
            f"no graph in adata.obsp[{connectivity_key!r}]; run scresidual.pp.spatial_graph first."
        )
    H = neighbourhood_rings(np.asarray(adata.obsm[use_rep]), adata.obsp[connectivity_key], n_hops)
    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = H.reshape(adata.n_obs, -1)
    return adata if copy else None
