"""Scale-out and out-of-core: sharded loaders, DDP, backed AnnData, degenerate graphs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scresidual import ScResidualError, tl
from scresidual.model import ResidualModel, SpatialRegionClassifier
from scresidual.pp import PCAFeatures, neighbourhood_rings, spatial_graph
from scresidual.sources import align_genes, iter_aligned_genes
from scresidual.train import ViewsDataset, batch_loader


def _slide(n: int = 300, n_genes: int = 40, seed: int = 0) -> ad.AnnData:
    """Two regions (left/right half) with a few marker genes; 40% labelled."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, size=(n, 2))
    region = (xy[:, 0] > 50).astype(int)
    mu = np.full((2, n_genes), 1.0)
    mu[0, :5] = 4.0
    mu[1, 5:10] = 4.0
    X = sp.csr_matrix(rng.poisson(mu[region]).astype(np.float32))
    labels = np.array(["left", "right"], dtype=object)[region]
    obs_labels = labels.copy()
    obs_labels[rng.random(n) > 0.4] = np.nan
    adata = ad.AnnData(
        X=X,
        obs=pd.DataFrame(
            {"region": obs_labels, "truth": labels}, index=[f"c{i}" for i in range(n)]
        ),
        obsm={"spatial": xy},
    )
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    return adata


def _fit(adata, **kwargs) -> SpatialRegionClassifier:
    return tl.fit_regions(
        adata,
        labels_key="region",
        n_comps=5,
        progress=False,
        accelerator="cpu",
        devices=1,
        guard=False,
        **kwargs,
    )


# ------------------------------------------------------------------ loaders and DDP
def test_sharded_loader_covers_rows_once_per_epoch():
    n = 103
    ds = ViewsDataset({"x": torch.arange(n, dtype=torch.float32)[:, None]})
    loaders = [
        batch_loader(ds, batch_size=10, shuffle=True, seed=3, num_replicas=2, rank=r)
        for r in range(2)
    ]
    rows = []
    for ld in loaders:
        ld.sampler.set_epoch(0)
        rows.append(torch.cat([b["views"]["x"][:, 0] for b in ld]).long())
    assert len(loaders[0]) == len(loaders[1])  # same number of steps on every rank
    assert set(rows[0].tolist()) | set(rows[1].tolist()) == set(range(n))
    assert len(rows[0]) + len(rows[1]) == n + 1  # one padded row to even out the shards
    loaders[0].sampler.set_epoch(1)  # Lightning calls this on loader.sampler every epoch
    again = torch.cat([b["views"]["x"][:, 0] for b in loaders[0]]).long()
    assert not torch.equal(again, rows[0])


@pytest.mark.slow
def test_ddp_spawn_two_cpu_processes():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    X[:, 0] += 3 * y
    model = ResidualModel(
        arm="scratch",
        residuals={"f": ("mlp", {})},
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=8,
        progress=False,
        guard=False,
        batch_size=32,
        folds=1,  # one spawn: gloo's worker teardown rarely aborts, and five spawns multiply it
    )
    model.fit({"f": X}, y.astype(str))
    accuracy = (model.predict({"f": X}) == y.astype(str)).mean()
    assert accuracy > 0.85, accuracy
    report = model.guard_report_["scratch"]
    assert all(0 <= e < 8 for e in report["best_epochs"]) and np.isfinite(report["val_loss"])


# ------------------------------------------------------------------ backed AnnData
@pytest.fixture(scope="module")
def fitted():
    adata = _slide()
    return adata, _fit(adata)


@pytest.fixture(scope="module")
def backed(tmp_path_factory, fitted):
    adata = fitted[0]
    path = tmp_path_factory.mktemp("backed") / "slide.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_chunked_gene_alignment_and_pca_match_in_memory(backed):
    adata, path = backed
    b = ad.read_h5ad(path, backed="r")
    genes = list(adata.var_names[::-1][:30]) + ["missing"]
    full = align_genes(adata, genes)
    assert (align_genes(b, genes, chunk_size=37) != full).nnz == 0
    blocks = list(iter_aligned_genes(b, genes, chunk_size=50))
    assert [s for s, _ in blocks] == list(range(0, adata.n_obs, 50))
    assert (sp.vstack([blk for _, blk in blocks]) != full).nnz == 0
    p_mem = PCAFeatures.fit(adata, n_comps=5, max_cells=120, seed=1)
    p_bak = PCAFeatures.fit(b, n_comps=5, max_cells=120, seed=1)
    np.testing.assert_allclose(p_mem.components, p_bak.components, atol=1e-5)
    np.testing.assert_allclose(p_mem.transform(adata), p_bak.transform(b, chunk_size=29), atol=1e-4)
    b.file.close()


def test_predict_on_backed_file(backed, fitted):
    adata, path = backed
    clf = fitted[1]
    b = ad.read_h5ad(path, backed="r")
    proba = clf.predict_proba(b)
    pd.testing.assert_frame_equal(proba, clf.predict_proba(adata), atol=1e-5)
    accuracy = (proba.idxmax(1).to_numpy() == adata.obs["truth"].to_numpy()).mean()
    assert accuracy > 0.9, accuracy
    with pytest.raises(ScResidualError, match="read-only.*predict_proba"):
        clf.predict(b)
    out = clf.predict(b, copy=True)
    assert not out.isbacked and out.X is None
    assert (out.obs["region_pred"].astype(str) == proba.idxmax(1)).all()
    assert "region_pred" not in b.obs
    b.file.close()


# ------------------------------------------------------------------ degenerate graphs
def test_isolated_cells_average_over_themselves():
    xy = np.array([[0, 0], [1, 0], [0, 1], [500, 500]], dtype=float)
    adata = ad.AnnData(obs=pd.DataFrame(index=list("abcd")), obsm={"spatial": xy})
    conn, _ = spatial_graph(adata, graph="radius:5", copy=True)
    assert conn[3].nnz == 0
    X = np.arange(8, dtype=np.float32).reshape(4, 2)
    H = neighbourhood_rings(X, conn, 2)
    assert H.shape == (4, 3, 2) and np.isfinite(H).all()
    np.testing.assert_allclose(H[3], np.repeat(X[3:4], 3, axis=0))


def test_duplicated_coordinates():
    adata = _slide(120)
    adata.obsm["spatial"][60:] = adata.obsm["spatial"][:60]  # every position twice
    conn, _ = spatial_graph(adata, graph="knn:6", copy=True)
    assert conn.shape == (120, 120) and (conn.getnnz(1) > 0).all()
    conn, _ = spatial_graph(adata, graph="delaunay", copy=True)  # qhull keeps one of each duplicate
    linked = conn.getnnz(1) > 0
    assert conn.shape == (120, 120) and (linked[:60] | linked[60:]).all()
    rings = neighbourhood_rings(adata.obsm["spatial"].astype(np.float32), conn, 2)
    assert np.isfinite(rings).all()


def test_one_cell_slides(fitted):
    adata, clf = fitted
    one = adata[:1].copy()
    proba = clf.predict_proba(one)
    assert proba.shape == (1, 2) and np.isfinite(proba.to_numpy()).all()
    two = adata[:41].copy()
    two.obs["slide"] = ["a"] * 40 + ["b"]
    conn, _ = spatial_graph(two, graph="knn:6", library_key="slide", copy=True)
    assert conn[40].nnz == 0 and conn[:, 40].nnz == 0 and conn[:40].nnz > 0


def test_rings_reject_graph_of_other_size():
    conn = sp.identity(5, format="csr")
    with pytest.raises(ScResidualError, match="rebuild the graph"):
        neighbourhood_rings(np.zeros((4, 3), dtype=np.float32), conn)


def test_no_dense_square_in_rings():
    n = 200_000  # an n x n float32 matrix would be 160 GB
    rows = np.arange(n)
    conn = sp.csr_matrix((np.ones(n), (rows, (rows + 1) % n)), shape=(n, n))
    H = neighbourhood_rings(np.arange(n, dtype=np.float32)[:, None], conn, 2)
    assert H.shape == (n, 3, 1)
    np.testing.assert_allclose(H[:5, 2, 0], [2, 3, 4, 5, 6])  # the cell two steps on
