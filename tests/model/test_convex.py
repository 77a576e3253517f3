"""The exact engine (``solver="newton-cg"``): REFINE's linear arms as logistic regressions."""

import numpy as np
import pytest

from scresidual import ScResidualError
from scresidual.model import ResidualModel
from scresidual.model._convex import (
    EVIDENCE_FLOOR,
    PENALTIES,
    fit_block,
    fold_weights,
    penalty_weights,
    scorable_rows,
    strongest_kept,
)
from scresidual.model._selection import splits, temperature

LINEAR = {"residuals": {"feat": ("linear", {})}, "solver": "newton-cg", "progress": False}


def _split(y, frac, seed=0):
    labelled = np.random.default_rng(seed).random(len(y)) < frac
    return np.where(labelled, y, None), labelled


def _acc(model, views, y, mask):
    return (model.predict(views)[~mask] == y[~mask]).mean()


def test_refine_with_an_informative_source_beats_scratch(toy_views):
    y_train, mask = _split(toy_views["y"], 0.1)
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    refine = ResidualModel(arm="refine", sources=["src"], **LINEAR).fit(views, y_train)
    scratch = ResidualModel(arm="scratch", sources=["src"], **LINEAR).fit(views, y_train)
    y = toy_views["y"]
    assert _acc(refine, views, y, mask) > _acc(scratch, views, y, mask) + 0.1
    assert refine.guard_report_["refine"]["source_share"] > 0


def test_a_useless_source_gets_little_or_no_share(toy_views):
    y_train, mask = _split(toy_views["y"], 0.2)
    views = {"src": toy_views["useless"], "feat": toy_views["feats"]}
    refine = ResidualModel(arm="refine", sources=["src"], **LINEAR).fit(views, y_train)
    scratch = ResidualModel(arm="scratch", sources=["src"], **LINEAR).fit(views, y_train)
    y = toy_views["y"]
    assert refine.guard_report_["refine"]["source_share"] <= 0.25
    assert _acc(refine, views, y, mask) >= _acc(scratch, views, y, mask) - 0.02


def test_guard_report_and_refit_are_reproducible(toy_views):
    y_train, _ = _split(toy_views["y"], 0.2)
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    a = ResidualModel(arm="refine", sources=["src"], seed=3, **LINEAR).fit(views, y_train)
    b = ResidualModel(arm="refine", sources=["src"], seed=3, **LINEAR).fit(views, y_train)
    np.testing.assert_array_equal(a.predict_proba(views), b.predict_proba(views))
    assert set(a.guard_report_) == {"linear-probe", "scratch", "refine"}
    for arm in ("linear-probe", "scratch"):
        report = a.guard_report_[arm]
        loss, weight = report["cv_loss"], report["penalty_weights"]
        # C is the penalty with the most evidence, and evidence falls as the loss rises
        assert report["C"] == max(weight, key=weight.get)
        assert sum(weight.values()) == pytest.approx(1) and len(loss) == len(PENALTIES)
        by_loss = sorted(loss, key=loss.get)
        assert [weight[c] for c in by_loss] == sorted(weight.values(), reverse=True)
        assert weight[by_loss[0]] > 0


def test_linear_refine_saves_and_loads(toy_views, tmp_path):
    y_train, _ = _split(toy_views["y"], 0.2)
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    model = ResidualModel(arm="refine", sources=["src"], **LINEAR).fit(views, y_train)
    model.save(tmp_path / "m")
    again = ResidualModel.load(tmp_path / "m", progress=False)
    np.testing.assert_array_equal(again.predict_proba(views), model.predict_proba(views))
    np.testing.assert_array_equal(
        again.predict_proba(views, raw=True), model.predict_proba(views, raw=True)
    )
    # stored as what it is: arrays and numbers, no network weights
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "exact_head.npz",
        "residual_model.json",
    ]
    head = again.predictor_
    assert head.share == model.guard_report_["refine"]["source_share"] or head.arm != "refine"
    # damaged arrays or sizes are one-line errors
    with np.load(tmp_path / "m" / "exact_head.npz") as d:
        arrays = {k: d[k] for k in d.files}
    name = next(k for k in arrays if k.endswith("_coef"))
    np.savez(tmp_path / "m" / "exact_head.npz", **{**arrays, name: arrays[name][:, :-1]})
    with pytest.raises(ScResidualError, match="mismatched parts") as err:
        ResidualModel.load(tmp_path / "m")
    assert "\n" not in str(err.value)
    (tmp_path / "m" / "exact_head.npz").write_bytes(b"not a zip")
    with pytest.raises(ScResidualError, match="mismatched parts"):
        ResidualModel.load(tmp_path / "m")


def test_the_exact_engine_refuses_nonlinear_parts_and_gradient_options(toy_views):
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    y_train, _ = _split(toy_views["y"], 0.2)
    with pytest.raises(ScResidualError, match="solver='adam'"):
        ResidualModel(
            arm="refine",
            sources=["src"],
            residuals={"feat": ("mlp", {})},
            solver="newton-cg",
            progress=False,
        ).fit(views, y_train)
    with pytest.raises(ScResidualError, match="solver='adam'"):
        ResidualModel(arm="adapter", sources=["src"], **LINEAR).fit(views, y_train)
    for option in ({"max_epochs": 5}, {"lr": 0.1}, {"patience": 3}, {"source_dropout": 0.2}):
        with pytest.raises(ScResidualError, match="gradient engine") as info:
            ResidualModel(arm="refine", sources=["src"], **LINEAR, **option)
        assert "\n" not in str(info.value) and next(iter(option)) in str(info.value)
    with pytest.raises(ScResidualError, match="exact engine"):
        ResidualModel(sources=["src"], residuals={"feat": ("mlp", {})}, cv_repeats=2)
    with pytest.raises(ScResidualError, match="accelerator='gpu'"):
        ResidualModel(arm="refine", sources=["src"], accelerator="gpu", **LINEAR)
    # shared options are read by both engines; the former solver name still works
    assert ResidualModel(arm="scratch", n_jobs=2, folds=3, **LINEAR).config.solver == "newton-cg"
    old_name = {**LINEAR, "solver": "lbfgs"}
    assert ResidualModel(arm="scratch", **old_name).config.solver == "newton-cg"


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_block_on_noise_is_close_to_uninformative(seed):
    # Every penalty fits noise alike; the out-of-fold temperature is what shrinks the block.
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(120, 40))
    y = rng.integers(0, 3, 120)  # labels unrelated to X
    folds = [(np.setdiff1d(np.arange(120), v), v) for v in np.array_split(np.arange(120), 5)]
    fit = fit_block(X, y, folds, n_classes=3, weights=None)
    assert fit.scale < 0.5
    assert np.abs(fit.coef).max() < 0.2
    assert min(fit.cv_loss.values()) == pytest.approx(np.log(3), abs=0.02)


def test_rows_of_classes_missing_from_a_fold_are_not_scored():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    folds = [(np.arange(8), np.array([8])), (np.arange(1, 9), np.array([0]))]
    keep = scorable_rows(y, folds)
    assert not keep[8] and keep[0]


def test_temperature_recovers_the_scale_of_miscalibrated_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4000, 3)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    log_p = np.log(p)
    assert temperature(log_p / 4, y, None) == pytest.approx(4, rel=0.15)


def test_out_of_fold_probabilities_are_kept_for_the_chosen_arm(toy_views):
    y_train, mask = _split(toy_views["y"], 0.2)
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    model = ResidualModel(arm="refine", sources=["src"], **LINEAR).fit(views, y_train)
    assert set(model.oof_rows_) <= set(np.flatnonzero(mask))
    assert len(model.oof_rows_) > 0.9 * mask.sum()
    np.testing.assert_allclose(model.oof_proba_.sum(1), 1, atol=1e-6)
    # out of fold means worse than in sample, but far better than chance here
    oof_acc = (model.oof_proba_.argmax(1) == toy_views["y"][model.oof_rows_].astype(int)).mean()
    assert 0.6 < oof_acc


def test_folds_hold_out_whole_slides_when_labels_span_several():
    labelled = np.arange(0, 90, 2)
    codes = np.tile([0, 1, 2], 15)
    groups = np.repeat([0, 1, 2], 30)
    folds = splits(labelled, codes, k=5, validation_size=0.2, seed=0, groups=groups)
    assert len(folds) == 3  # at most one fold per slide
    for train, val in folds:
        assert len(np.unique(groups[val])) == 1
        assert not np.isin(groups[train], groups[val]).any()


def test_slide_groups_reach_the_cross_validation(toy_views):
    y = np.array(toy_views["y"])
    views = {"feats": toy_views["feats"], "good": toy_views["good"]}
    slide = np.where(np.arange(len(y)) < len(y) // 2, "a", "b")
    kw = {"sources": ["good"], "residuals": {"feats": ("linear", {})}, "solver": "newton-cg"}
    plain = ResidualModel(**kw).fit(views, y)
    grouped = ResidualModel(**kw).fit(views, y, groups=slide)  # every cell labelled: "auto"

    def loss(m):
        return m.guard_report_["scratch"]["cv_loss"]

    assert loss(grouped) != loss(plain)
    ungrouped = ResidualModel(**kw, group_folds=False).fit(views, y, groups=slide)
    assert loss(ungrouped) == loss(plain)
    partly = np.where(np.arange(len(y)) % 10 == 0, None, y)  # 10% unlabelled: "auto" is off
    assert loss(ResidualModel(**kw).fit(views, partly, groups=slide)) == loss(
        ResidualModel(**kw).fit(views, partly)
    )
    assert loss(ResidualModel(**kw, group_folds=True).fit(views, partly, groups=slide)) != loss(
        ResidualModel(**kw).fit(views, partly)
    )
    with pytest.raises(ScResidualError, match="one group per row"):
        ResidualModel(**kw).fit(views, y, groups=slide[:10])


def test_every_class_below_the_number_of_folds_still_cross_validates(toy_views):
    # 3 classes x 4 labels, folds=5: stratifying is impossible (sklearn refuses), so the
    # folds are plain; the model fits and predicts every class.
    y = toy_views["y"]
    rows = np.concatenate([np.flatnonzero(y == c)[:4] for c in np.unique(y)[:3]])
    y_train = np.full(len(y), None, dtype=object)
    y_train[rows] = y[rows]
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    model = ResidualModel(arm="refine", sources=["src"], folds=5, **LINEAR).fit(views, y_train)
    assert len(model.classes_) == 3
    pred = model.predict(views)
    assert pred.shape == (len(y),) and set(pred) == set(model.classes_)  # every class predicted
    assert len(model.oof_rows_) > 0  # and cross-validated
    seen = np.isin(y, model.classes_)
    assert (pred[seen] == y[seen]).mean() > 0.5  # three-way chance is 1/3


def test_fold_models_weigh_each_class_as_the_final_fit_does():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 20 + [1] * 6 + [2] * 2)
    full = compute_class_weight("balanced", classes=np.arange(3), y=y)
    train = np.setdiff1d(np.arange(len(y)), [0, 1, 20, 26])  # a fold short of class 2's half
    w = fold_weights(full, y, train)
    # balanced weights recomputed on the fold: every class has the same total weight again
    np.testing.assert_allclose(
        w, compute_class_weight("balanced", classes=np.arange(3), y=y[train])
    )
    totals = np.bincount(y[train], weights=w[y[train]])
    np.testing.assert_allclose(totals, totals[0])
    assert fold_weights(None, y, train) is None


def test_penalties_are_averaged_by_out_of_fold_evidence():
    # n * loss is a log-likelihood: a tie splits the weight, 10 nats behind gets nothing
    w = penalty_weights({0.01: 0.30, 0.1: 0.30, 1.0: 0.30 + 10 / 100}, n=100)
    assert w[0.01] == pytest.approx(0.5) and w[0.1] == pytest.approx(0.5) and w[1.0] == 0
    w = penalty_weights({0.01: 0.30, 0.1: 0.31}, n=100)  # one nat: e^-1 of the best's weight
    assert w[0.1] / w[0.01] == pytest.approx(np.exp(-1)) and sum(w.values()) == pytest.approx(1)
    assert min(v for v in w.values() if v > 0) >= EVIDENCE_FLOOR


def test_a_class_no_fold_validates_takes_the_strongest_kept_penalty():
    assert strongest_kept({0.001: 0.0, 0.01: 0.2, 0.1: 0.8}) == {0.001: 0, 0.01: 1, 0.1: 0}
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5))
    y = (X[:, :3] + 0.3 * rng.normal(size=(120, 3))).argmax(1)
    y[0] = 3  # one label: in no fold's training part when it is validated
    folds = [(np.setdiff1d(np.arange(120), v), v) for v in np.array_split(np.arange(120), 5)]
    assert not scorable_rows(y, folds)[0]
    fit = fit_block(X, y, folds, n_classes=4, weights=np.ones(4))
    kept = [C for C, v in fit.penalty_weights.items() if v > 0]
    assert len(kept) == 1 and fit.C == kept[0]


def test_an_averaged_block_is_one_linear_model_that_predicts_its_labels():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 5))
    y = (X[:, :3] + 0.3 * rng.normal(size=(150, 3))).argmax(1)
    folds = [(np.setdiff1d(np.arange(150), v), v) for v in np.array_split(np.arange(150), 5)]
    fit = fit_block(X, y, folds, n_classes=3, weights=None)
    assert sum(fit.penalty_weights.values()) == pytest.approx(1)
    assert fit.C == max(fit.penalty_weights, key=fit.penalty_weights.get)
    assert set(fit.penalty_weights) <= set(fit.cv_loss)
    assert fit.coef.shape == (3, 5) and fit.scale > 0
    assert ((X @ fit.coef.T + fit.intercept).argmax(1) == y).mean() > 0.8
    assert (fit.oof_log_proba.argmax(1) == y).mean() > 0.7


def test_folds_fitted_in_worker_processes_give_the_same_model(toy_views):
    y_train, _ = _split(toy_views["y"], 0.1)
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    kw = {"arm": "scratch", "cv_repeats": 1, **LINEAR}  # one block, one round: few pool calls
    one = ResidualModel(n_jobs=1, **kw).fit(views, y_train)
    two = ResidualModel(n_jobs=2, **kw).fit(views, y_train)
    np.testing.assert_array_equal(one.predict_proba(views), two.predict_proba(views))
    assert one.guard_report_ == two.guard_report_
