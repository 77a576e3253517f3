"""The spatial region classifier: lifecycle, views, training, saving."""

import numpy as np
import pandas as pd
import pytest

from scresidual import ScResidualError, metrics, pp, tl
from scresidual.model import SpatialRegionClassifier

FAST = {"progress": False, "folds": 1}
GRADIENT = {"max_epochs": 40, "patience": 8, **FAST}  # encoder "hops" or arm "adapter"


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
    core = model.residual_model_
    assert (core.options.max_epochs, core.options.patience, core.config.folds) == (3, 2, 1)
    assert model.init_params_ == before and model.chosen_arm_ == "scratch"
    model.train(progress=False, folds=1)  # the next call starts from the defaults again
    assert model.residual_model_.options.max_epochs == 200
    # fit_regions sends each option to its step (the seed reaches the model) and leaves
    # adata's own registration as it was
    registered = one.uns["_scresidual_setup"]["args"]
    fitted = tl.fit_regions(one, labels_key="region", arm="scratch", seed=3, folds=3, cv_repeats=2)
    cfg = fitted.residual_model_.config
    assert (cfg.seed, cfg.folds, cfg.arm, cfg.solver) == (3, 3, "scratch", "newton-cg")
    assert fitted.residual_model_.options.cv_repeats == 2
    assert fitted.setup["labels_key"] == "region"
    assert one.uns["_scresidual_setup"]["args"] == registered


def test_an_option_the_engine_does_not_read_is_a_one_line_error(slides):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    SpatialRegionClassifier.setup_anndata(one, labels_key="train")
    linear = SpatialRegionClassifier(one)  # the exact engine: no epochs, no learning rate
    for options in ({"max_epochs": 5}, {"lr": 0.01, "patience": 3}):
        with pytest.raises(ScResidualError, match="of the gradient engine") as err:
            linear.train(progress=False, **options)
        assert "\n" not in str(err.value) and "exact engine" in str(err.value)
    hops = SpatialRegionClassifier(one, encoder="hops")
    with pytest.raises(ScResidualError, match="cv_repeats: option.* of the exact engine"):
        hops.train(progress=False, cv_repeats=2)


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
    hidden = one.obs["train"].isna().to_numpy()
    truth = one.obs["region"].astype(str).to_numpy()[hidden]

    def hidden_f1(model):
        pred = model.predict_proba(one).idxmax(axis=1).to_numpy()[hidden]
        return metrics.evaluate(truth, pred)["macro_f1"]

    model = tl.fit_regions(one, labels_key="train", encoder="hops", seed=0, **GRADIENT)
    assert model.residual_model_.config.solver == "adam" and model.chosen_arm_ == "refine"
    exact = tl.fit_regions(one, labels_key="train", seed=0, **FAST)
    no_graph = tl.fit_regions(one, labels_key="train", graph="none", arm="scratch", **FAST)
    # the graph encoder learns the regions: far above expression alone, near the exact fit
    assert hidden_f1(model) > hidden_f1(no_graph) + 0.05
    assert hidden_f1(model) > hidden_f1(exact) - 0.1
    SpatialRegionClassifier.setup_anndata(one, labels_key="train")
    with pytest.raises(ScResidualError, match="unknown encoder"):
        SpatialRegionClassifier(one, encoder="gat")


def test_adapter_arm_trains_by_gradient_descent_under_the_linear_encoder(slides):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    one.obsm["X_emb"] = np.random.default_rng(0).normal(size=(one.n_obs, 4)).astype(np.float32)
    model = tl.fit_regions(
        one, labels_key="train", sources=["obsm:X_emb"], arm="adapter", **GRADIENT
    )
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
    from scresidual.model import _spatial_views

    compute = _spatial_views.spatial_views
    monkeypatch.setattr(
        _spatial_views, "spatial_views", lambda m, a: computed.append(a) or compute(m, a)
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


def test_gradients_are_blocks_the_fit_may_take_and_saving_keeps_them(slides, tmp_path):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    rng = np.random.default_rng(0)
    one.obsm["X_emb"] = rng.normal(size=(one.n_obs, 4)).astype(np.float32)
    kw = {"labels_key": "train", "sources": ["obsm:X_emb"], "seed": 0, "progress": False}
    model = tl.fit_regions(one, gradients=True, **kw)
    views = model.views(one)
    conn, _ = pp.spatial_graph(one, graph="delaunay", copy=True)
    expected = pp.neighbourhood_gradients(one.obsm["X_emb"], one.obsm["spatial"], conn, 2)
    np.testing.assert_allclose(views["source_gradients_0"], expected, rtol=1e-6)
    rings = model.setup["n_hops"] + 1
    assert views["gradients_0"].shape == (one.n_obs, views["features_0"].shape[1] // rings)
    assert model.residual_model_.config.side_blocks == ["source_gradients_0", "gradients_0"]
    for branch in ("scratch", "linear-probe"):  # each branch weighs its own gradients
        report = model.guard_report_[branch]
        assert 0 <= report["side_share"] <= 1 and report["side_block"]["penalty_weights"]
    assert model.setup["gradients"] is True
    model.save(tmp_path / "m")
    again = SpatialRegionClassifier.load(tmp_path / "m", progress=False)
    pd.testing.assert_frame_equal(again.predict_proba(one), model.predict_proba(one), atol=1e-6)
    plain = tl.fit_regions(one, gradients=False, **kw)
    assert not [k for k in plain.views(one) if "gradients" in k]
    assert "side_share" not in str(plain.guard_report_)


def test_gradients_need_a_graph_and_only_the_exact_engine_reads_them(slides):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    with pytest.raises(ScResidualError, match="graph='none'"):
        tl.fit_regions(one, labels_key="train", gradients=True, graph="none")
    plain = tl.fit_regions(one, labels_key="train", **FAST)  # off by default
    assert plain.setup["gradients"] is False and not plain.residual_model_.config.side_blocks
    # the gradient engine has no side blocks: a hops model reads no gradients
    kw = {"encoder": "hops", "gradients": True, "seed": 0, **GRADIENT}
    hops = tl.fit_regions(one, labels_key="train", **kw)
    assert list(hops.residual_model_.config.residuals) == ["features_0"]


def test_side_features_are_a_block_the_fit_may_take(slides, tmp_path):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    kw = {"labels_key": "train", "seed": 0, "progress": False}
    model = tl.fit_regions(one, side_features=["neighbourhood-pca"], gradients=True, **kw)
    views = model.views(one)
    assert views["features_1"].shape == views["features_0"].shape  # rings of its own PCA
    assert not np.allclose(views["features_1"], views["features_0"])
    blocks = model.residual_model_.config.side_blocks
    assert sorted(blocks) == ["features_1", "gradients_0", "gradients_1"]
    assert 0 <= model.guard_report_["scratch"]["side_share"] <= 1
    model.save(tmp_path / "m")
    again = SpatialRegionClassifier.load(tmp_path / "m", progress=False)
    assert again.setup["side_features"] == ["neighbourhood-pca"]
    pd.testing.assert_frame_equal(again.predict_proba(one), model.predict_proba(one), atol=1e-6)


def test_side_features_are_checked_at_setup(slides):
    one = slides[slides.obs["slide"] == "slide1"].copy()
    setup = SpatialRegionClassifier.setup_anndata
    with pytest.raises(ScResidualError, match="unknown side_features 'umap'"):
        setup(one, labels_key="train", side_features=["umap"])
    with pytest.raises(ScResidualError, match="features is empty"):
        setup(one, labels_key="train", features=[], side_features=["pca"])
    with pytest.raises(ScResidualError, match="'neighbourhood-pca' averages each cell"):
        setup(one, labels_key="train", features=["neighbourhood-pca"], graph="none")
