"""Tiled prediction: tiles with a halo give the untiled labels, in memory, on disk and on Dask."""

import hashlib
import os
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scresidual._errors import ScResidualError
from scresidual.model import (
    SpatialRegionClassifier,
    plan_tiles,
    predict_tiled,
    receptive_halo,
)

N_GENES = 30


def _slide(xy: np.ndarray, region: np.ndarray, seed: int = 0) -> ad.AnnData:
    """Counts whose means depend on the region, 10% of the cells labelled."""
    rng = np.random.default_rng(seed)
    profiles = np.random.default_rng(99).lognormal(0, 1, (region.max() + 1, N_GENES))
    X = sp.csr_matrix(rng.poisson(profiles[region] * 0.4).astype(np.float32))
    names = np.array(["a", "b", "c", "d"], dtype=object)[region]
    labels = pd.Series(names).where(rng.random(len(xy)) < 0.1, None).to_numpy()
    obs = pd.DataFrame({"region": labels}, index=[f"c{i}" for i in range(len(xy))])
    adata = ad.AnnData(X=X, obs=obs, obsm={"spatial": xy})
    adata.var_names = [f"g{i}" for i in range(N_GENES)]
    return adata


@pytest.fixture(scope="module")
def cloud():
    """A Xenium-like point cloud of 20,000 cells in four quadrant regions."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1400, (20_000, 2))
    region = (xy[:, 0] > 700).astype(int) + 2 * (xy[:, 1] > 700)
    return _slide(xy, region)


def _trained(adata, graph: str) -> SpatialRegionClassifier:
    adata = adata.copy()
    SpatialRegionClassifier.setup_anndata(adata, labels_key="region", graph=graph, n_comps=8)
    return SpatialRegionClassifier(adata, seed=0).train(progress=False)


@pytest.fixture(scope="module")
def knn_model(cloud):
    return _trained(cloud, "knn:6")


def _agreement(a: ad.AnnData, b: ad.AnnData) -> float:
    return float((a.obs["region_pred"].to_numpy() == b.obs["region_pred"].to_numpy()).mean())


def test_every_cell_is_in_one_core_and_its_halo_is_read():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (3000, 2))
    lib = np.where(rng.random(3000) < 0.5, "s1", "s2")
    tiles = plan_tiles(xy, tile_size=20, halo=5, libraries=lib)
    owners = np.concatenate([t.rows[t.core] for t in tiles])
    assert np.array_equal(np.sort(owners), np.arange(3000))
    for t in tiles:
        assert len(set(lib[t.rows])) == 1  # slides stay apart
        core = xy[t.rows[t.core]]
        lo, hi = core.min(0) - 5, core.max(0) + 5
        near = np.flatnonzero(((xy >= lo) & (xy <= hi)).all(1) & (lib == lib[t.rows[0]]))
        assert np.isin(near, t.rows).all()  # everything within the halo is read


def test_tiled_prediction_equals_untiled_on_many_tiles(cloud, knn_model):
    untiled = knn_model.predict(cloud, copy=True)
    tiled = predict_tiled(knn_model, cloud, tile_size=200, copy=True, progress=False)
    assert len(plan_tiles(cloud.obsm["spatial"], tile_size=200, halo=0)) == 49
    assert _agreement(untiled, tiled) >= 0.999
    np.testing.assert_allclose(
        tiled.obsm["region_proba"], untiled.obsm["region_proba"], atol=1e-4, rtol=0
    )
    for k in ("region_uncertainty", "region_set", "region_set_size"):
        assert (tiled.obs[k].astype(str) == untiled.obs[k].astype(str)).all(), k
    assert tiled.obsm["region_proba"].dtype == np.float32
    assert "region_pred" not in cloud.obs  # copy=True leaves the input alone


def test_delaunay_tiles_keep_the_labels(cloud):
    model = _trained(cloud, "delaunay")
    untiled = model.predict(cloud, copy=True)
    tiled = predict_tiled(model, cloud, tile_size=350, copy=True, progress=False)
    assert _agreement(untiled, tiled) >= 0.999
    close = np.abs(tiled.obsm["region_proba"] - untiled.obsm["region_proba"]).max(1) <= 1e-4
    assert close.mean() >= 0.99


def test_a_region_border_on_a_tile_border():
    # A Visium HD-like grid, 10 units apart: the region changes at x = 500, where a tile
    # border lies (tiles start at the smallest x, 0, and are 250 wide).
    g = np.arange(0, 1000, 10.0)
    xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    region = (xy[:, 0] >= 500).astype(int)
    adata = _slide(xy, region, seed=2)
    model = _trained(adata, "knn:4")
    tiles = plan_tiles(xy, tile_size=250, halo=0)
    on_border = np.flatnonzero(xy[:, 0] == 500)
    for t in tiles:  # the border column is the core of the tiles on its right
        core_x = xy[t.rows[t.core], 0]
        assert core_x.min() >= 500 or core_x.max() < 500
    untiled = model.predict(adata, copy=True)
    tiled = predict_tiled(model, adata, tile_size=250, copy=True, progress=False)
    assert _agreement(untiled, tiled) == 1.0
    np.testing.assert_allclose(
        tiled.obsm["region_proba"], untiled.obsm["region_proba"], atol=1e-4, rtol=0
    )
    near = np.abs(xy[:, 0] - 500) <= 20
    truth = np.where(region == 1, "b", "a")
    assert (tiled.obs["region_pred"].to_numpy()[near] == truth[near]).mean() > 0.9
    assert len(on_border) == 100


def test_halo_is_the_receptive_field():
    g = np.arange(0, 200, 10.0)
    xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    # a corner cell's 4th neighbour is 2 steps away: 3 hops of 20
    assert receptive_halo(xy, graph="knn:4", n_hops=3) == pytest.approx(60)
    assert receptive_halo(xy, graph="radius:15", n_hops=2) == pytest.approx(30)
    assert receptive_halo(xy, graph="none", n_hops=3) == 0
    assert 40 <= receptive_halo(xy, graph="delaunay", n_hops=3) <= 4 * 10 * np.sqrt(2) + 1e-6


def test_backed_h5ad_is_read_tile_by_tile(cloud, knn_model, tmp_path):
    path = tmp_path / "slide.h5ad"
    cloud.write_h5ad(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ScResidualError, match="copy=True"):
        predict_tiled(knn_model, backed, tile_size=700)
    tiled = predict_tiled(knn_model, backed, tile_size=700, copy=True, progress=False)
    backed.file.close()
    assert tiled.X is None
    untiled = knn_model.predict(cloud, copy=True)
    assert _agreement(untiled, tiled) == 1.0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_zarr_table_gets_the_columns_without_rewriting_x(zarr_store, tmp_path):
    import spatialdata

    from scresidual.read import spatialdata as read_table

    store = tmp_path / "slide.zarr"
    shutil.copytree(zarr_store, store)
    sdata = spatialdata.read_zarr(store)
    SpatialRegionClassifier.setup_anndata(sdata, labels_key="train", graph="knn:6", n_comps=8)
    model = SpatialRegionClassifier(sdata, seed=0).train(progress=False)
    untiled = model.predict(sdata, copy=True).tables["table"]
    # the same tiles in memory (on this hexagonal grid k-NN ties may break differently
    # on a tile than on the whole slide, so a few cells may differ from the untiled run)
    expected = predict_tiled(model, read_table(store), tile_size=1000, copy=True, progress=False)
    x_files = {
        p: p.read_bytes() for p in (store / "tables" / "table" / "X").rglob("*") if p.is_file()
    }
    copy = tmp_path / "copy.zarr"
    predict_tiled(model, store, tile_size=1000, output=copy, progress=False)
    for _ in range(2):  # in place, then over the first predictions
        predict_tiled(model, store, tile_size=1000, progress=False)
    assert all(p.read_bytes() == b for p, b in x_files.items())  # X is not rewritten
    for path in (store, copy):
        table = spatialdata.read_zarr(path).tables["table"]
        pred = table.obs["train_pred"].to_numpy()
        assert (pred == expected.obs["train_pred"].to_numpy()).all()
        assert (pred == untiled.obs["train_pred"].to_numpy()).mean() >= 0.99
        np.testing.assert_array_equal(table.obsm["train_proba"], expected.obsm["train_proba"])
        assert list(table.uns["train_proba_classes"]) == model.classes_
        assert "train_set" in table.obs and "region" in table.obs
        assert list(table.obs.columns).count("train_pred") == 1
    assert not list(store.rglob(".*.tmp"))  # no temporary left behind


@pytest.mark.slow
def test_parallel_processes_give_the_same_labels(cloud, knn_model):
    one = predict_tiled(knn_model, cloud, tile_size=700, copy=True, progress=False)
    two = predict_tiled(knn_model, cloud, tile_size=700, n_jobs=2, copy=True, progress=False)
    assert _agreement(one, two) == 1.0
    np.testing.assert_array_equal(one.obsm["region_proba"], two.obsm["region_proba"])


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_labels(cloud, knn_model):
    psutil = pytest.importorskip("psutil")
    distributed = pytest.importorskip("distributed")
    one = predict_tiled(knn_model, cloud, tile_size=700, copy=True, progress=False)
    cluster_kw = {"n_workers": 2, "threads_per_worker": 1, "host": "127.0.0.1"}
    with (
        distributed.LocalCluster(processes=True, dashboard_address=None, **cluster_kw) as cluster,
        distributed.Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        assert len(pids) == 2
        on_dask = predict_tiled(
            knn_model, cloud, tile_size=700, client=client, copy=True, progress=False
        )
    assert _agreement(one, on_dask) == 1.0
    np.testing.assert_array_equal(one.obsm["region_proba"], on_dask.obsm["region_proba"])
    alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], 10)[1]
    assert not alive, "a Dask worker outlived its cluster"


def test_bad_inputs_raise_one_line(cloud, knn_model, tmp_path):
    untrained = SpatialRegionClassifier.__new__(SpatialRegionClassifier)
    untrained.residual_model_ = None
    with pytest.raises(ScResidualError, match="not trained"):
        predict_tiled(untrained, cloud)
    with pytest.raises(ScResidualError, match=".zarr store"):
        predict_tiled(knn_model, tmp_path / "slide.h5ad")
    with pytest.raises(ScResidualError, match="tile_size"):
        predict_tiled(knn_model, cloud, tile_size=0)
