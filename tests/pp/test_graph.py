"""Spatial graphs and neighbour rings (scresidual.pp)."""

import numpy as np
import pytest
import scipy.sparse as sp

from scresidual import ScResidualError, pp


def test_graph_has_no_edges_across_slides(slides):
    conn, _ = pp.spatial_graph(slides, graph="knn:6", library_key="slide", copy=True)
    s = slides.obs["slide"].to_numpy()
    i, j = conn.nonzero()
    assert len(i) > 0 and (s[i] == s[j]).all()
    # both slides share coordinates, so without library_key edges would cross
    conn2, _ = pp.spatial_graph(slides, graph="knn:6", copy=True)
    i2, j2 = conn2.nonzero()
    assert (s[i2] != s[j2]).any()


@pytest.mark.parametrize("graph", ["radius:150", "delaunay"])
def test_other_graphs(slides, graph):
    one = slides[slides.obs["slide"] == "slide1"]
    conn, _ = pp.spatial_graph(one, graph=graph, copy=True)
    assert sp.issparse(conn) and conn.shape == (one.n_obs, one.n_obs) and conn.nnz > one.n_obs


def test_rings_are_means_over_cells_exactly_k_edges_away():
    # path 0 - 1 - 2 - 3
    conn = sp.csr_matrix(np.eye(4, k=1) + np.eye(4, k=-1), dtype=np.float32)
    X = np.array([[0.0], [10.0], [20.0], [30.0]], dtype=np.float32)
    H = pp.neighbourhood_rings(X, conn, n_rings=3)[..., 0]
    np.testing.assert_allclose(H[0], [0, 10, 20, 30])
    np.testing.assert_allclose(H[1], [10, 10, 30, 30])  # ring 3 is empty: keeps ring 2
    np.testing.assert_allclose(H[2], [20, 20, 0, 0])


def test_rings_match_breadth_first_search():
    rng = np.random.default_rng(0)
    n = 60
    A = sp.random(n, n, density=0.05, random_state=0, format="csr")
    A = ((A + A.T) > 0).astype(np.float32)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    H = pp.neighbourhood_rings(X, A, n_rings=2)
    dist = sp.csgraph.shortest_path(A, unweighted=True)
    for i in range(n):
        for k in (1, 2):
            ring = np.flatnonzero(dist[i] == k)
            expect = X[ring].mean(0) if len(ring) else H[i, k - 1]
            np.testing.assert_allclose(H[i, k], expect, rtol=1e-5, atol=1e-6)


def test_spatial_graph_follows_squidpys_copy_convention(slides):
    a = slides[slides.obs["slide"] == "slide1"].copy()
    conn, dist = pp.spatial_graph(a, graph="knn:4", copy=True)
    assert "spatial_connectivities" not in a.obsp and "spatial_distances" not in a.obsp
    assert (np.diff(conn.indptr) == 4).all() and dist.nnz == conn.nnz
    assert pp.spatial_graph(a, graph="knn:4") is None
    assert (a.obsp["spatial_connectivities"] != conn).nnz == 0
    assert (a.obsp["spatial_distances"] != dist).nnz == 0


def test_delaunay_drops_links_longer_than_the_long_link_percentile():
    from anndata import AnnData
    from scipy.spatial import Delaunay

    from scresidual._constants import LONG_LINK_PERCENTILE

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), -1).reshape(-1, 2)
    xy = np.vstack([grid + rng.normal(scale=0.1, size=grid.shape), [[60.0, 10.0]]])  # a stray
    conn, dist = pp.spatial_graph(AnnData(obsm={"spatial": xy}), graph="delaunay", copy=True)
    # every Delaunay edge, independently of squidpy
    edges = set()
    for tri in Delaunay(xy).simplices:
        for a in range(3):
            i, j = sorted((tri[a], tri[(a + 1) % 3]))
            edges.add((i, j))
    i, j = np.array(sorted(edges)).T
    length = np.linalg.norm(xy[i] - xy[j], axis=1)
    kept = np.asarray(conn[i, j]).ravel() > 0
    # a cut on length: every dropped link is longer than every kept one ...
    assert length[kept].max() < length[~kept].min()
    # ... at the percentile: about 1% of the links go, all of the stray's among them
    share = 1 - LONG_LINK_PERCENTILE / 100
    assert abs((~kept).mean() - share) < share / 2 and conn[len(grid)].nnz == 0
    assert ((length > 30) & kept).sum() == 0 and (length > 30).sum() >= 5
    np.testing.assert_allclose(dist[i[kept], j[kept]].A1, length[kept], rtol=1e-5)
    assert (conn != conn.T).nnz == 0 and conn.nnz == 2 * kept.sum()


def test_gradients_are_the_first_azimuthal_moment_of_the_neighbours():
    xs, ys = np.meshgrid(np.arange(8.0), np.arange(8.0))
    xy = np.c_[xs.ravel(), ys.ravel()]
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    conn = sp.csr_matrix((d > 0) & (d < 1.01), dtype=np.float32)  # 4 neighbours inside
    X = np.c_[2 * xy[:, 0], np.full(len(xy), 5.0), xy[:, 0] * xy[:, 1]]
    G = pp.neighbourhood_gradients(X, xy, conn, n_rings=1)
    inner = (xy.min(1) > 0) & (xy.max(1) < 7)
    # a slope of 2: (1/4)(2·1 + (-2)(-1)) = 1 in every inner cell; a constant has none
    np.testing.assert_allclose(G[inner, 0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(G[:, 1], 0.0, atol=1e-6)
    # x·y at (x, y): the moment is (y, x)/2, so its size grows with the distance to 0
    np.testing.assert_allclose(G[inner, 2], np.hypot(*xy[inner].T) / 2, rtol=1e-5)
    # two rings: 12 cells within 2 edges inside; a mirror-symmetric layout cancels
    G2 = pp.neighbourhood_gradients(X, xy, conn, n_rings=2)
    far = (xy.min(1) > 1) & (xy.max(1) < 6)
    np.testing.assert_allclose(G2[far, 1], 0.0, atol=1e-6)
    assert (G2[far, 0] > 0).all()


def test_gradients_refuse_a_graph_of_other_cells():
    conn = sp.csr_matrix(np.eye(3, k=1) + np.eye(3, k=-1))
    with pytest.raises(ScResidualError, match="rebuild the graph"):
        pp.neighbourhood_gradients(np.zeros((4, 2)), np.zeros((4, 2)), conn)
