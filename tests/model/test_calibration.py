import logging

import anndata as ad
import numpy as np
import pytest
from matplotlib import pyplot as plt

from scresidual import ScResidualError, pl, tl
from scresidual.cli import main
from scresidual.metrics import expected_calibration_error
from scresidual.model import SpatialRegionClassifier
from scresidual.model._calibration import Calibration

FAST = {"max_epochs": 40, "patience": 8, "progress": False, "folds": 1}  # encoder "hops"


def _labelled(a, frac, seed=0):
    rng = np.random.default_rng(seed)
    a = a.copy()
    a.obs["train"] = a.obs["region"].astype(object).where(rng.random(a.n_obs) < frac, None)
    return a


@pytest.fixture(scope="module")
def fitted(small_slides):
    """Both slides, 30% labelled, and the default (exact, cross-validated) model on them."""
    a = _labelled(small_slides, 0.3)
    SpatialRegionClassifier.setup_anndata(a, labels_key="train", library_key="slide")
    return a, SpatialRegionClassifier(a).train(progress=False)


def _coverage(sets, truth) -> float:
    return float(np.mean([t in s.split("|") for s, t in zip(sets, truth, strict=True)]))


def _draw(rng, n, k=4):
    """Logits and labels drawn from their own softmax (so the softmax is calibrated)."""
    z = rng.normal(scale=1.5, size=(n, k))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z, y


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_conformal_sets_cover_new_cells_at_the_level(method):
    rng = np.random.default_rng(0)
    z, y = _draw(rng, 3000)
    cal = Calibration.fit(_softmax(3 * z), y)  # an over-confident model
    z_new, y_new = _draw(rng, 20000)
    for alpha in (0.1, 0.2):
        member = cal.sets(cal.apply(_softmax(3 * z_new)), alpha, method)
        coverage = member[np.arange(len(y_new)), y_new].mean()
        assert abs(coverage - (1 - alpha)) < 0.02, (alpha, coverage)


def test_temperature_scaling_fixes_an_over_confident_model():
    rng = np.random.default_rng(1)
    z, y = _draw(rng, 3000)
    cal = Calibration.fit(_softmax(3 * z), y)
    assert cal.temperature == pytest.approx(1 / 3, rel=0.15)
    assert cal.ece_before > 0.1 and cal.ece_after < 0.03
    z_new, y_new = _draw(rng, 5000)
    fresh = _softmax(3 * z_new)
    assert expected_calibration_error(cal.apply(fresh), y_new) < 0.5 * (
        expected_calibration_error(fresh, y_new)
    )
    assert (cal.apply(fresh).argmax(1) == fresh.argmax(1)).all()  # labels unchanged


def test_temperature_is_kept_only_where_the_out_of_fold_cells_support_it():
    rng = np.random.default_rng(3)
    z, y = _draw(rng, 300)
    honest = Calibration.fit(_softmax(z), y)  # already calibrated: T = 1 is not rejected
    assert honest.temperature == 1.0 and honest.fitted_temperature != 1.0
    assert Calibration.fit(_softmax(z), y, test=False).temperature == (honest.fitted_temperature)
    sharp = Calibration.fit(_softmax(3 * z), y)  # clearly over-confident: scaled
    assert sharp.temperature == sharp.fitted_temperature < 0.6


def test_uncalibrated_means_the_logistic_regressions_own_probabilities(fitted, tmp_path):
    a, model = fitted
    m = model.residual_model_
    head = m.predictor_  # the exact fit, stored as what it is
    assert head.arm == m.chosen_arm_ and all(getattr(head, b).temperature > 0 for b in head.blocks)
    raw = model.predict_proba(a, calibrated=False).to_numpy()
    scaled = m.predict_proba(model.views(a))
    assert np.allclose(raw.sum(1), 1) and not np.allclose(raw, scaled, atol=1e-3)
    labelled = a.obs["train"].notna().to_numpy()
    y = np.searchsorted(model.classes_, a.obs["region"].astype(str).to_numpy())
    cal = model.predict_proba(a).to_numpy()
    assert expected_calibration_error(cal[~labelled], y[~labelled]) < (
        expected_calibration_error(raw[~labelled], y[~labelled])
    )
    model.save(tmp_path / "m")
    loaded = SpatialRegionClassifier.load(tmp_path / "m", progress=False)
    assert np.allclose(loaded.predict_proba(a, calibrated=False).to_numpy(), raw, atol=1e-5)


def test_calibration_round_trips_and_refuses_bad_values():
    rng = np.random.default_rng(2)
    z, y = _draw(rng, 200)
    cal = Calibration.fit(_softmax(z), y)
    again = Calibration.from_dict(cal.to_dict())
    assert again.threshold(0.1) == pytest.approx(cal.threshold(0.1), abs=1e-6)
    for bad in ({"temperature": -1.0}, {"scores": {"lac": [2.0], "aps": [0.5]}}):
        with pytest.raises(ValueError):
            Calibration.from_dict({**cal.to_dict(), **bad})
    with pytest.raises(ScResidualError, match="raise alpha"):
        Calibration.fit(_softmax(z[:5]), y[:5]).threshold(0.1)


def test_predict_writes_uncertainty_and_sets_that_cover(fitted, tmp_path):
    a, model = fitted
    out = model.predict(a, copy=True)
    unl = out.obs["train"].isna().to_numpy()
    sets = out.obs["train_set"].astype(str).to_numpy()
    sizes = out.obs["train_set_size"].to_numpy()
    assert (sizes == [len(s.split("|")) if s else 0 for s in sets]).all()
    assert 0.85 <= _coverage(sets[unl], out.obs["region"].astype(str)[unl]) <= 0.97
    assert sizes[unl].mean() < 3  # informative, not every class
    proba = out.obsm["train_proba"]
    assert np.allclose(out.obs["train_uncertainty"], 1 - proba.max(1), atol=1e-6)
    # the most probable class comes first in a non-empty set
    first = [s.split("|")[0] for s in sets if s]
    assert (np.asarray(first) == out.obs["train_pred"].astype(str).to_numpy()[sizes > 0]).all()
    info = out.uns["train_calibration"]
    assert info["calibrated"] and info["coverage"] == 0.9 and info["n_calibration"] > 100
    wider = model.predict(a, copy=True, alpha=0.02, method="aps")
    assert wider.obs["train_set_size"].mean() > sizes.mean()
    model.save(tmp_path / "m")
    loaded = SpatialRegionClassifier.load(tmp_path / "m", progress=False)
    again = loaded.predict(a, copy=True)
    assert (again.obs["train_set"].astype(str) == out.obs["train_set"].astype(str)).all()


def test_models_without_calibration_say_so_in_one_line(small_slides, caplog):
    one = _labelled(small_slides[small_slides.obs["slide"] == "slide1"], 0.1)
    few = one.copy()
    SpatialRegionClassifier.setup_anndata(few, labels_key="train")
    few.obs["train"] = _labelled(one, 0.05).obs["train"]  # labels are read when training
    few = SpatialRegionClassifier(few).train(progress=False)
    with pytest.raises(ScResidualError, match="out-of-fold cells") as err:
        few.predict(one, copy=True, sets=True)
    assert "\n" not in str(err.value) and "label more" in str(err.value)
    rare = one.copy()
    rare.obs["train"] = rare.obs["region"].astype(object)
    first = np.flatnonzero(rare.obs["region"] == rare.obs["region"].iloc[0])
    rare.obs.iloc[first[1:], rare.obs.columns.get_loc("train")] = None  # 1 label of it
    with caplog.at_level(logging.WARNING, logger="scresidual"):
        thin = tl.fit_regions(rare, labels_key="train", progress=False)
    name = str(rare.obs["region"].iloc[0])
    # calibrated on the other classes; one line names the class without a guarantee
    calibration = thin.residual_model_.calibration_
    assert calibration is not None and calibration.thin_classes == (name,)
    line = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert line and "\n" not in line[0] and "not guaranteed" in line[0]
    assert "label more" in line[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scresidual"):
        sets = thin.predict(rare, copy=True, sets=True)
    assert "train_set" in sets.obs and name in caplog.text
    assert sets.uns["train_calibration"]["classes_without_guarantee"] == [name]
    hops = tl.fit_regions(one, labels_key="train", encoder="hops", **FAST)
    with pytest.raises(ScResidualError, match="folds=5") as err:
        hops.predict(one, copy=True, sets=True)
    assert "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING, logger="scresidual"):
        out = hops.predict(one, copy=True)
    assert "no prediction sets" in caplog.text and "train_set" not in out.obs
    assert "train_uncertainty" in out.obs and not out.uns["train_calibration"]["calibrated"]
    with pytest.raises(ScResidualError, match="alpha"):
        few.predict(one, copy=True, alpha=1.5)


def test_uncertainty_map(fitted):
    a, model = fitted
    out = model.predict(a, copy=True)
    fig = pl.uncertainty(out, key="train", library_key="slide", slide="slide1", return_fig=True)
    assert len(fig.axes[0].child_axes) == 1  # the map and its colour bar (an inset as tall)
    _, ax = plt.subplots()
    assert pl.uncertainty(out, key="train", ax=ax) is ax
    plt.close("all")
    with pytest.raises(ScResidualError, match="nope_uncertainty"):
        pl.uncertainty(out, key="nope")


def test_cli_predict_writes_sets(fitted, tmp_path, capsys):
    a, model = fitted
    model.save(tmp_path / "m")
    a.write_h5ad(tmp_path / "slide.h5ad")
    out = tmp_path / "pred.h5ad"
    code = main(
        [
            "predict",
            str(tmp_path / "m"),
            str(tmp_path / "slide.h5ad"),
            "--output",
            str(out),
            "--alpha",
            "0.2",
            "--sets-method",
            "aps",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    pred = ad.read_h5ad(out)
    assert pred.uns["train_calibration"]["score"] == "aps"
    assert {"train_set", "train_set_size", "train_uncertainty"} <= set(pred.obs)
    code = main(
        [
            "predict",
            str(tmp_path / "m"),
            str(tmp_path / "slide.h5ad"),
            "--output",
            str(tmp_path / "p2.h5ad"),
            "--alpha",
            "0",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: alpha") and err.count("\n") == 1


def test_cross_fitted_hops_model_is_calibrated_on_its_out_of_fold_predictions(fitted):
    a, _ = fitted
    hops = tl.fit_regions(
        a, labels_key="train", library_key="slide", encoder="hops", **{**FAST, "folds": 3}
    )
    m = hops.residual_model_
    assert m.calibration_ is not None and len(m.oof_rows_) == a.obs["train"].notna().sum()
    assert np.allclose(m.oof_proba_.sum(1), 1, atol=1e-5)
    out = hops.predict(a, copy=True)
    unl = out.obs["train"].isna().to_numpy()
    sets = out.obs["train_set"].astype(str).to_numpy()
    assert 0.8 <= _coverage(sets[unl], out.obs["region"].astype(str)[unl]) <= 0.98
