"""The spatial region classifier: lifecycle, views, training, saving."""

import numpy as np
import pandas as pd
import pytest

from scresidual import ScResidualError, metrics, pp, tl
from scresidual.model import SpatialRegionClassifier

FAST = {"max_epochs": 40, "patience": 8, "progress": False, "folds": 1}


def test_fit_predict_save_load(slides, tmp_path, scvi_dir):
    train = slides[slides.obs["slide"] == "slide1"].copy()
    test = slides[slides.obs["slide"] == "slide2"].copy()
    before = train.copy()
    SpatialRegionClassifier.setup_anndata(train, labels_key="train", sources=[f"scvi:{scvi_dir}"])
    model = SpatialRegionClassifier(train, seed=0).train(**FAST)
    # training leaves the AnnData as setup_anndata registered it
    assert set(train.obs.columns) == set(before.obs.columns) and not train.obsm.keys() - {"spatial"}
    assert set(train.uns) - set(before.uns) == {"_scresidual_setup"}
    out = model.predict(test, copy=True)
    assert "train_pred" not in test.obs
    assert list(out.uns["train_proba_classes"]) == model.classes_
    assert out.obsm["train_proba"].shape == (test.n_obs, len(model.classes_))
    score = metrics.score_predictions(out, truth_key="region", labels_key="train")
    assert score["accuracy"] > 0.55
    model.save(tmp_path / "model")
    assert (tmp_path / "model" / "sources" / "source_0" / "model.pt").is_file()
    again = SpatialRegionClassifier.load(tmp_path / "model", progress=False)
    pd.testing.assert_frame_equal(again.predict_proba(test), model.predict_proba(test), atol=1e-5)


def test_spatial_residual_beats_expression_alone(slides):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    unl = one.obs["train"].isna().to_numpy()
    scores = {}
    for graph in ("knn:6", "none"):
        m = tl.fit_regions(one, labels_key="train", graph=graph, arm="scratch", **FAST)
        pred = m.predict_proba(one).idxmax(axis=1).to_numpy()
        scores[graph] = metrics.evaluate(one.obs["region"].to_numpy()[unl], pred[unl])["macro_f1"]
    assert scores["knn:6"] > scores["none"] + 0.03


def test_spatial_bad_input(slides):
    a = slides[:200].copy()
    setup = SpatialRegionClassifier.setup_anndata
    with pytest.raises(ScResidualError, match="obs key 'nope'"):
        setup(a, labels_key="nope")
    with pytest.raises(ScResidualError, match="obs key 'section'"):  # not silently ignored
        setup(a, labels_key="train", library_key="section")
    with pytest.raises(ScResidualError, match="unknown source"):
        setup(a, labels_key="train", sources=["hub:foo"])
    with pytest.raises(ScResidualError, match="unknown graph"):
        setup(a, labels_key="train", graph="knn6x")
    assert "_scresidual_setup" not in a.uns  # a refused setup registers nothing
    with pytest.raises(ScResidualError, match="not set up; call SpatialRegionClassifier"):
        SpatialRegionClassifier(a)
    no_xy = a.copy()
    del no_xy.obsm["spatial"]
    setup(no_xy, labels_key="train")
    with pytest.raises(ScResidualError, match="no spatial coordinates"):
        SpatialRegionClassifier(no_xy).train(**FAST)
    setup(a, labels_key="train", sources=["obsm:X_nope"])
    with pytest.raises(ScResidualError, match="obsm key 'X_nope'"):
        SpatialRegionClassifier(a).train(**FAST)
    dup = a.copy()
    dup.obs_names = ["same"] * dup.n_obs
    with pytest.raises(ScResidualError, match="duplicate cell names"):
        setup(dup, labels_key="train")


def test_options_go_to_their_own_step_and_train_keeps_the_settings(slides):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    SpatialRegionClassifier.setup_anndata(one, labels_key="train")
    with pytest.raises(ScResidualError, match="max_epochs: training option"):
        SpatialRegionClassifier(one, max_epochs=5)
    with pytest.raises(ScResidualError, match="unknown model option.*setup_anndata"):
        SpatialRegionClassifier(one, graph="knn:6")
    model = SpatialRegionClassifier(one, arm="scratch", encoder="hops")
    with pytest.raises(ScResidualError, match="unknown training option"):
        model.train(arm="refine")
    before = dict(model.init_params_)
    model.train(3, patience=2, progress=False, folds=1)
    # this call's options reached the fit and are recorded with it; the settings are unchanged
    cfg = model.residual_model_.config
    assert (cfg.max_epochs, cfg.patience, cfg.folds) == (3, 2, 1)
    assert model.init_params_ == before and model.chosen_arm_ == "scratch"
    model.train(progress=False, folds=1)  # the next call starts from the defaults again
    assert model.residual_model_.config.max_epochs == 200
    # fit_regions sends each option to its step (the seed reaches the model) and leaves
    # adata's own registration as it was
    registered = one.uns["_scresidual_setup"]["args"]
    fitted = tl.fit_regions(one, labels_key="region", arm="scratch", seed=3, folds=1, patience=2)
    cfg = fitted.residual_model_.config
    assert (cfg.seed, cfg.folds, cfg.patience, cfg.arm) == (3, 1, 2, "scratch")
    assert fitted.setup["labels_key"] == "region"
    assert one.uns["_scresidual_setup"]["args"] == registered


def test_feature_maps_are_fitted_on_the_training_slide_only(slides):
    # Regression: predicting before training used to fit the PCA on the slide predicted on,
    # and train() then kept that PCA.
    train = slides[slides.obs["slide"] == "slide1"].copy()
    test = slides[slides.obs["slide"] == "slide2"].copy()
    SpatialRegionClassifier.setup_anndata(train, labels_key="train")
    model = SpatialRegionClassifier(train)
    with pytest.raises(ScResidualError, match="not trained"):
        model.predict_proba(test)
    model.train(**FAST)
    own = pp.PCAFeatures.fit(train, n_comps=30, seed=0)
    on_test = pp.PCAFeatures.fit(test, n_comps=30, seed=0)
    assert not np.allclose(on_test.mean, own.mean, rtol=1e-3)  # the test can tell them apart
    np.testing.assert_allclose(
        model.views(train)["features_0"][:, :30], own.transform(train), rtol=1e-4, atol=1e-4
    )


def test_sources_enter_as_ring_means_and_stay_frozen(slides):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    rng = np.random.default_rng(0)
    one.obsm["X_emb"] = rng.normal(size=(one.n_obs, 4)).astype(np.float32)
    kw = {"labels_key": "train", "sources": ["obsm:X_emb"], "features": ["obsm:X_emb"]}
    SpatialRegionClassifier.setup_anndata(one, n_hops=2, **kw)
    views = SpatialRegionClassifier(one).views(one)
    conn, _ = pp.spatial_graph(one, graph="delaunay", copy=True)
    expected = pp.neighbourhood_rings(one.obsm["X_emb"], conn, 2).reshape(one.n_obs, -1)
    np.testing.assert_allclose(views["source_0"], expected, rtol=1e-6)
    SpatialRegionClassifier.setup_anndata(one, aggregate_sources=False, **kw)
    flat = SpatialRegionClassifier(one)
    np.testing.assert_array_equal(flat.views(one)["source_0"], one.obsm["X_emb"])


def test_old_model_folders_are_refused_with_the_version_line(slides, tmp_path):
    import json

    one = slides[slides.obs["slide"] == "slide1"].copy()
    model = tl.fit_regions(one, labels_key="train", **FAST)
    model.save(tmp_path / "m")
    setup = json.loads((tmp_path / "m" / "spatial_setup.json").read_text())
    del setup["format"]
    (tmp_path / "m" / "spatial_setup.json").write_text(json.dumps(setup))
    with pytest.raises(ScResidualError, match="format 1; this version reads format 2"):
        SpatialRegionClassifier.load(tmp_path / "m")


def test_sign_encoder_still_trains_with_adam(slides):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    model = tl.fit_regions(one, labels_key="train", encoder="hops", **FAST)
    assert model.residual_model_.config.solver == "adam" and model.chosen_arm_ == "refine"
    SpatialRegionClassifier.setup_anndata(one, labels_key="train")
    with pytest.raises(ScResidualError, match="unknown encoder"):
        SpatialRegionClassifier(one, encoder="gat")


def test_adapter_arm_trains_by_gradient_descent_under_the_linear_encoder(slides):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    one.obsm["X_emb"] = np.random.default_rng(0).normal(size=(one.n_obs, 4)).astype(np.float32)
    model = tl.fit_regions(one, labels_key="train", sources=["obsm:X_emb"], arm="adapter", **FAST)
    assert model.setup["encoder"] == "linear" and model.residual_model_.config.solver == "adam"
    assert model.residual_model_.config.arm == "adapter"
    assert model.predict_proba(one).shape[0] == one.n_obs


def test_a_damaged_registration_is_refused_in_one_line(slides):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    SpatialRegionClassifier.setup_anndata(one, labels_key="train")
    pca = one.uns["_scresidual_setup"]["pca"]["0"]
    pca["mean"] = pca["mean"][:-1]  # sizes no longer match the genes
    with pytest.raises(ScResidualError, match="is damaged; run SpatialRegionClassifier") as err:
        SpatialRegionClassifier(one)
    assert "\n" not in str(err.value)


def test_reuse_views_computes_the_inputs_once_and_changes_nothing(monkeypatch):
    from scresidual.datasets import lymph_node

    adata = lymph_node(n_slides=1, spots_per_side=20)
    adata.obs["labels"] = adata.obs["region"].astype(object).where(np.arange(adata.n_obs) % 4 == 0)
    model = tl.fit_regions(adata, labels_key="labels", seed=0, progress=False)
    plain = model.predict_proba(adata)
    computed = []
    compute = SpatialRegionClassifier._compute_views
    monkeypatch.setattr(
        SpatialRegionClassifier,
        "_compute_views",
        lambda self, a: computed.append(a) or compute(self, a),
    )
    with SpatialRegionClassifier.reuse_views():
        inside = model.predict_proba(adata)
        model.predict(adata)
        tl.suggest_labels(adata, model, n=5)
    assert len(computed) == 1
    pd.testing.assert_frame_equal(inside, plain)
    model.predict_proba(adata)  # outside the block: computed again
    assert len(computed) == 2
    # A memo kept between blocks serves a model refitted on other labels (same setup).
    memo = {}
    with SpatialRegionClassifier.reuse_views(memo):
        model.predict_proba(adata)
    adata.obs["labels"] = adata.obs["region"].astype(object).where(np.arange(adata.n_obs) % 3 == 0)
    with SpatialRegionClassifier.reuse_views(memo):
        refit = tl.fit_regions(adata, labels_key="labels", seed=0, progress=False)
        refit.predict_proba(adata)
    assert len(computed) == 3 and len(memo) == 1  # probabilities are not kept
    with SpatialRegionClassifier.reuse_views(memo):
        tl.fit_regions(adata, labels_key="labels", features=("pca",), n_hops=2, progress=False)
    assert len(computed) == 4  # another setup: other inputs
