"""Tiled training: the labelled cells' inputs, tile by tile, give the model train() gives."""

import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scresidual._errors import ScResidualError
from scresidual.model import SpatialRegionClassifier, plan_tiles, train_tiled
from scresidual.read.lazy import LazyTable

N_GENES = 30


@pytest.fixture(scope="module")
def slide():
    """12,000 cells in four quadrant regions, 5% labelled at random, a 4-d embedding."""
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 1100, (12_000, 2))
    region = (xy[:, 0] > 550).astype(int) + 2 * (xy[:, 1] > 550)
    profiles = np.random.default_rng(99).lognormal(0, 1, (4, N_GENES))
    X = sp.csr_matrix(rng.poisson(profiles[region] * 0.4).astype(np.float32))
    names = np.array(["a", "b", "c", "d"], dtype=object)[region]
    labels = pd.Series(names).where(rng.random(len(xy)) < 0.05, None).to_numpy()
    obs = pd.DataFrame({"region": labels}, index=[f"c{i}" for i in range(len(xy))])
    emb = (np.eye(4)[region] + rng.normal(0, 1.5, (len(xy), 4)) + 3).astype(np.float32)
    adata = ad.AnnData(X=X, obs=obs, obsm={"spatial": xy, "emb": emb})
    adata.var_names = [f"g{i}" for i in range(N_GENES)]
    return adata


def _model(adata, **setup) -> SpatialRegionClassifier:
    adata = adata.copy()
    SpatialRegionClassifier.setup_anndata(
        adata, labels_key="region", graph="knn:6", n_comps=8, **setup
    )
    return SpatialRegionClassifier(adata, seed=0)


@pytest.mark.parametrize("gradients", [False, True])
def test_tiled_fit_equals_the_whole_slide_fit(slide, gradients):
    # with gradients, the side blocks' inputs too come tile by tile, from the halo
    whole = _model(slide, sources=["obsm:emb"], gradients=gradients).train(progress=False)
    tiled = _model(slide, sources=["obsm:emb"], gradients=gradients)
    assert len(plan_tiles(slide.obsm["spatial"], tile_size=150, halo=0)) == 64
    assert train_tiled(tiled, slide, tile_size=150, progress=False) is tiled
    assert tiled.chosen_arm_ == whole.chosen_arm_
    p_whole = whole.predict_proba(slide).to_numpy()
    p_tiled = tiled.predict_proba(slide).to_numpy()
    np.testing.assert_allclose(p_tiled, p_whole, atol=1e-4)
    assert (p_tiled.argmax(1) == p_whole.argmax(1)).mean() >= 0.999


def test_tiled_fit_reads_a_zarr_store_lazily(slide, tmp_path):
    spatialdata = pytest.importorskip("spatialdata")
    from spatialdata.models import TableModel

    table = slide.copy()
    table.obs["region"] = table.obs["region"].astype("category")
    path = tmp_path / "slide.zarr"
    spatialdata.SpatialData(tables={"table": TableModel.parse(table)}).write(path)
    sample = LazyTable.open(path).sample(5_000, seed=0)
    assert sample.n_obs == 5_000 and sample.obs_names.is_monotonic_increasing is not None
    SpatialRegionClassifier.setup_anndata(sample, labels_key="region", graph="knn:6", n_comps=8)
    model = SpatialRegionClassifier(sample, arm="scratch", seed=0)
    train_tiled(model, path, tile_size=300, n_jobs=2, progress=False)
    in_memory = SpatialRegionClassifier(sample, arm="scratch", seed=0)
    train_tiled(in_memory, slide, tile_size=300, progress=False)
    already_open = SpatialRegionClassifier(sample, arm="scratch", seed=0)
    train_tiled(already_open, LazyTable.open(path), tile_size=300, progress=False)
    for other in (in_memory, already_open):
        np.testing.assert_allclose(
            model.predict_proba(slide).to_numpy(), other.predict_proba(slide).to_numpy(), atol=1e-6
        )
    unlabelled = slide.obs["region"].isna().to_numpy()
    truth = (slide.obsm["spatial"][:, 0] > 550).astype(int) + 2 * (
        slide.obsm["spatial"][:, 1] > 550
    )
    pred = model.predict_proba(slide).to_numpy().argmax(1)
    assert (pred[unlabelled] == truth[unlabelled]).mean() > 0.9


def test_bad_inputs_raise_one_line(slide, tmp_path):
    model = _model(slide)
    no_labels = slide.copy()
    del no_labels.obs["region"]
    with pytest.raises(ScResidualError, match="no obs column 'region'"):
        train_tiled(model, no_labels)
    none_set = slide.copy()
    none_set.obs["region"] = None
    with pytest.raises(ScResidualError, match="has no labels"):
        train_tiled(model, none_set)
    with pytest.raises(ScResidualError, match="unknown training option"):
        train_tiled(model, slide, epochs=3)
    with pytest.raises(ScResidualError, match="AnnData or a .zarr path"):
        train_tiled(model, tmp_path / "slide.h5ad")
    with pytest.raises(ScResidualError, match="tile_size"):
        train_tiled(model, slide, tile_size=-1)
    store = tmp_path / "copy.zarr"
    shutil.rmtree(store, ignore_errors=True)
    with pytest.raises(ScResidualError, match="table_key"):
        train_tiled(model, slide, table_key="table")
