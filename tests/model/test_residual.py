import json

import numpy as np
import pytest
import torch

from scresidual import ScResidualError
from scresidual.model import ResidualModel
from scresidual.model._selection import paired_guard
from scresidual.module import ResidualNetwork, build_encoder

FAST = {"max_epochs": 60, "patience": 10, "progress": False, "folds": 1}


def _split(y, frac=0.3, seed=0):
    rng = np.random.default_rng(seed)
    labelled = rng.random(len(y)) < frac
    return np.where(labelled, y, None), labelled


def _acc(model, views, y, mask):
    return (model.predict(views)[~mask] == y[~mask]).mean()


@pytest.mark.parametrize("arm", ["refine", "scratch", "linear-probe", "adapter"])
def test_each_arm_fits_and_predicts(toy_views, arm):
    y_train, mask = _split(toy_views["y"])
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    model = ResidualModel(arm=arm, sources=["src"], residuals={"feat": ("mlp", {})}, **FAST)
    model.fit(views, y_train)
    proba = model.predict_proba(views)
    assert proba.shape == (len(y_train), 3)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    assert model.classes_ == ["0", "1", "2"]
    assert _acc(model, views, toy_views["y"], mask) > 0.6


def test_arms_use_the_parts_they_should():
    enc = {"feat": build_encoder("mlp", 8)}
    shapes = {"src": (3,)}, {"feat": (8,)}
    scratch = ResidualNetwork(
        arm="scratch", source_shapes=shapes[0], residual_shapes=shapes[1], encoders=enc, n_classes=3
    )
    probe = ResidualNetwork(
        arm="linear-probe",
        source_shapes=shapes[0],
        residual_shapes=shapes[1],
        encoders=enc,
        n_classes=3,
    )
    assert scratch.source_names == [] and scratch.residual_names == ["feat"]
    assert probe.residual_names == [] and sum(p.numel() for p in probe.parameters()) == 3 * 3 + 3


def test_refine_uses_an_informative_source(toy_views):
    y_train, mask = _split(toy_views["y"], frac=0.1)
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    kw = {"sources": ["src"], "residuals": {"feat": ("mlp", {})}, **FAST}
    refine = ResidualModel(arm="refine", guard=False, **kw).fit(views, y_train)
    scratch = ResidualModel(arm="scratch", **kw).fit(views, y_train)
    y = toy_views["y"]
    assert _acc(refine, views, y, mask) > _acc(scratch, views, y, mask) + 0.1


def test_guard_keeps_scratch_level_with_a_useless_source(toy_views):
    y_train, mask = _split(toy_views["y"], frac=0.1)
    views = {"src": toy_views["useless"], "feat": toy_views["feats"]}
    kw = {"sources": ["src"], "residuals": {"feat": ("mlp", {})}, **FAST}
    refine = ResidualModel(arm="refine", guard=True, **kw).fit(views, y_train)
    scratch = ResidualModel(arm="scratch", **kw).fit(views, y_train)
    assert set(refine.guard_report_) == {"linear-probe", "refine", "scratch"}
    assert "paired_loss_difference" in refine.guard_report_["scratch"]
    y = toy_views["y"]
    assert _acc(refine, views, y, mask) >= _acc(scratch, views, y, mask) - 0.03


def test_guard_rule_needs_a_difference_beyond_noise():
    rng = np.random.default_rng(0)
    base = rng.exponential(size=40)
    noise = rng.normal(scale=0.5, size=40)
    report = {"scratch": {}, "linear-probe": {}}

    def choose(losses, fallbacks=("linear-probe", "scratch")):
        return paired_guard("refine", list(fallbacks), losses, 1.0, report)

    clear = {"refine": base + 0.5, "scratch": base, "linear-probe": base + 1.0}
    assert choose(clear) == "scratch"
    # same mean loss, differences only noise
    noisy = {
        "refine": base + noise,
        "scratch": base + rng.permutation(noise),
        "linear-probe": base + 2,
    }
    assert choose(noisy) == "refine"
    assert report["scratch"]["paired_standard_error"] > 0
    probe_best = {"refine": base + 0.3, "scratch": base + 0.6, "linear-probe": base}
    assert choose(probe_best) == "linear-probe"
    assert choose(clear, fallbacks=()) == "refine"


@pytest.mark.slow
def test_cross_fitting_validates_every_label_and_averages_members(toy_views, tmp_path):
    from scresidual.module import EnsembleNetwork

    y_train, mask = _split(toy_views["y"], frac=0.1)  # ~120 labels: auto -> 5 folds
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    fast = {k: v for k, v in FAST.items() if k != "folds"}
    model = ResidualModel(sources=["src"], residuals={"feat": ("mlp", {})}, n_jobs=2, **fast)
    model.fit(views, y_train)
    assert model.n_folds(int(mask.sum())) == 5 and model.n_folds(5000) == 1
    # folds fitted in two worker processes or in turn: the same model
    serial = ResidualModel(sources=["src"], residuals={"feat": ("mlp", {})}, n_jobs=1, **fast)
    np.testing.assert_allclose(
        serial.fit(views, y_train).predict_proba(views), model.predict_proba(views), atol=1e-6
    )
    net = model.network
    assert isinstance(net, EnsembleNetwork) and len(net.members) == 5
    for arm, report in model.guard_report_.items():
        assert report["n_members"] == 5 and len(report["best_epochs"]) == 5, arm
    shares = model.guard_report_["refine"]["source_shares"]
    assert len(shares) == 5 and all(s in (0.0, 0.25, 0.5, 0.75, 1.0) for s in shares)
    # the ensemble predicts the mean of its members' probabilities
    x = {k: torch.from_numpy(v[:50]) for k, v in views.items()}
    with torch.no_grad():
        mean = torch.stack([m(x).softmax(1) for m in net.members]).mean(0).numpy()
    np.testing.assert_allclose(
        model.predict_proba({k: v[:50] for k, v in views.items()}), mean, atol=1e-5
    )
    assert _acc(model, views, toy_views["y"], mask) > 0.9
    model.save(tmp_path / "m")
    again = ResidualModel.load(tmp_path / "m", progress=False)
    assert isinstance(again.network, EnsembleNetwork) and len(again.network.members) == 5
    np.testing.assert_allclose(again.predict_proba(views), model.predict_proba(views), atol=1e-6)


@pytest.mark.slow
def test_registered_encoder_reaches_parallel_folds(toy_views):
    """Fresh loky workers get the encoders registered here, and fit the same folds."""
    from torch import nn

    from scresidual.module import register_encoder

    class Halves(nn.Module):  # defined here, as a user would in a notebook
        def __init__(self, n_in, n_out=4):
            super().__init__()
            self.lin, self.n_out = nn.Linear(n_in, n_out), n_out

        def forward(self, x):
            return self.lin(x)

    register_encoder("halves-test", Halves)
    y_train, _ = _split(toy_views["y"], frac=0.05)
    fast = {**FAST, "folds": 2, "n_jobs": 2, "max_epochs": 10}
    views = {"feat": toy_views["feats"]}
    model = ResidualModel(arm="scratch", residuals={"feat": ("halves-test", {})}, **fast)
    model.fit(views, y_train)
    assert model.guard_report_["scratch"]["n_members"] == 2
    fast["n_jobs"] = 1
    serial = ResidualModel(arm="scratch", residuals={"feat": ("halves-test", {})}, **fast)
    np.testing.assert_allclose(
        serial.fit(views, y_train).predict_proba(views), model.predict_proba(views), atol=1e-6
    )


@pytest.mark.parametrize(
    "engine",
    [{"solver": "newton-cg", "progress": False}, {"residuals": {"feat": ("mlp", {})}, **FAST}],
)
def test_unlabelled_rows_are_not_trained_on(toy_views, engine):
    y = toy_views["y"].astype(object).copy()
    y[:600] = None
    y[600] = ""  # labels only on the second half
    feats = toy_views["feats"]
    kw = {"arm": "scratch", "residuals": {"feat": ("linear", {})}, **engine}
    model = ResidualModel(**kw).fit({"feat": feats}, y)
    assert model.classes_ == ["0", "1", "2"] and model.oof_rows_.min(initial=601) >= 601
    # Shuffling the unlabelled rows among themselves keeps every column's mean and standard
    # deviation (the only thing they feed), so the fit must not move; the same shuffle of
    # the labelled rows must.
    rng = np.random.default_rng(0)
    shuffled = feats.copy()
    shuffled[:601] = feats[rng.permutation(601)]
    moved = feats.copy()
    moved[601:] = feats[601 + rng.permutation(len(y) - 601)]
    again = ResidualModel(**kw).fit({"feat": shuffled}, y)
    other = ResidualModel(**kw).fit({"feat": moved}, y)
    p = model.predict_proba({"feat": feats})
    np.testing.assert_allclose(again.predict_proba({"feat": feats}), p, atol=1e-4)
    assert np.abs(other.predict_proba({"feat": feats}) - p).max() > 0.05


def test_same_seed_same_result(toy_views):
    y_train, _ = _split(toy_views["y"])
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    kw = {"sources": ["src"], "residuals": {"feat": ("mlp", {})}, "seed": 3, **FAST}
    a = ResidualModel(**kw).fit(views, y_train).predict_proba(views)
    b = ResidualModel(**kw).fit(views, y_train).predict_proba(views)
    np.testing.assert_array_equal(a, b)


def test_source_features_are_never_changed(toy_views):
    y_train, _ = _split(toy_views["y"])
    src = toy_views["good"].copy()
    model = ResidualModel(sources=["src"], residuals={"feat": ("mlp", {})}, **FAST)
    model.fit({"src": src, "feat": toy_views["feats"]}, y_train)
    np.testing.assert_array_equal(src, toy_views["good"])


def test_save_load_roundtrip_and_damage(toy_views, tmp_path):
    y_train, _ = _split(toy_views["y"])
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    model = ResidualModel(sources=["src"], residuals={"feat": ("mlp", {})}, **FAST)
    model.fit(views, y_train).save(tmp_path / "m")
    again = ResidualModel.load(tmp_path / "m", progress=False)
    np.testing.assert_allclose(again.predict_proba(views), model.predict_proba(views), atol=1e-6)
    assert again.chosen_arm_ == model.chosen_arm_
    with pytest.raises(ScResidualError, match="exists"):
        model.save(tmp_path / "m")
    # another format version
    meta = json.loads((tmp_path / "m" / "residual_model.json").read_text())
    meta["format"] = 99
    (tmp_path / "m" / "residual_model.json").write_text(json.dumps(meta))
    with pytest.raises(ScResidualError, match="format 99"):
        ResidualModel.load(tmp_path / "m")
    # truncated weights
    model.save(tmp_path / "m2")
    w = tmp_path / "m2" / "residual_model.pt"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ScResidualError, match="corrupted"):
        ResidualModel.load(tmp_path / "m2")
    with pytest.raises(ScResidualError, match="not a scresidual model"):
        ResidualModel.load(tmp_path)


def test_bad_inputs_give_one_line_errors(toy_views):
    views = {"feat": toy_views["feats"]}
    model = ResidualModel(arm="scratch", residuals={"feat": ("mlp", {})}, **FAST)
    for y, pattern in [
        (np.full(len(toy_views["y"]), "a", dtype=object), "at least 2 classes"),
        (np.full(len(toy_views["y"]), None, dtype=object), "at least 2 classes"),
    ]:
        with pytest.raises(ScResidualError, match=pattern) as info:
            model.fit(views, y)
        assert "\n" not in str(info.value)
    bad = toy_views["feats"].copy()
    bad[3, 2] = np.nan
    with pytest.raises(ScResidualError, match="NaN"):
        model.fit({"feat": bad}, toy_views["y"])
    with pytest.raises(ScResidualError, match="missing input view"):
        model.fit({"other": bad}, toy_views["y"])
    with pytest.raises(ScResidualError, match="unknown arm"):
        ResidualModel(arm="finetune")
    with pytest.raises(ScResidualError, match="unknown residual encoder"):
        build_encoder("transformer", 4)
    with pytest.raises(ScResidualError, match="not fitted"):
        model.predict(views)


def test_cnn_residual_on_images():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 2, n)
    images = rng.normal(size=(n, 1, 12, 12)).astype(np.float32)
    images[y == 1, :, :6, :] += 1.0  # class 1 is brighter on top
    model = ResidualModel(arm="scratch", residuals={"img": ("cnn", {"widths": (8,)})}, **FAST)
    model.fit({"img": images}, y.astype(str))
    assert (model.predict({"img": images}) == y.astype(str)).mean() > 0.8
    assert any(isinstance(m, torch.nn.Conv2d) for m in model.network.modules())


@pytest.mark.parametrize("solver", ["adam", "newton-cg"])
def test_moments_stand_for_the_unlabelled_rows(toy_views, solver):
    """Labelled rows + every row's moments: the fit on every row (train_tiled's contract)."""
    y_train, mask = _split(toy_views["y"])
    views = {"src": toy_views["good"], "feat": toy_views["feats"]}
    residual = ("mlp", {}) if solver == "adam" else ("linear", {})
    kw = {"sources": ["src"], "residuals": {"feat": residual}, "solver": solver, "seed": 0}
    kw = {**kw, **({**FAST, "max_epochs": 5} if solver == "adam" else {"progress": False})}
    whole = ResidualModel(**kw).fit(views, y_train)
    moments = {
        k: (v.astype(np.float64).mean(0), v.astype(np.float64).std(0, ddof=1))
        for k, v in views.items()
    }
    rows = {k: v[mask] for k, v in views.items()}
    part = ResidualModel(**kw).fit(rows, y_train[mask], moments=moments)
    np.testing.assert_allclose(part.predict_proba(views), whole.predict_proba(views), atol=1e-4)
    unstandardised = ResidualModel(**kw).fit(rows, y_train[mask])
    assert np.abs(unstandardised.predict_proba(views) - whole.predict_proba(views)).max() > 1e-3


def _side_views(toy_views, informative: bool):
    rng = np.random.default_rng(1)
    y = toy_views["y"].astype(int)
    side = rng.normal(size=(len(y), 6)).astype(np.float32)
    if informative:  # what the residual view lacks: the label, in other columns
        side[:, 1] += 2.0 * (y == 1) - 2.0 * (y == 2)
    return {"src": toy_views["useless"], "feat": toy_views["feats"], "side": side}


def test_a_side_block_joins_scratch_only_where_it_helps(toy_views, tmp_path):
    y_train, mask = _split(toy_views["y"], frac=0.2)
    kw = {"sources": ["src"], "solver": "newton-cg", "progress": False}
    linear = {"feat": ("linear", {}), "side": ("linear", {})}
    plain = ResidualModel(residuals={"feat": ("linear", {})}, **kw)

    noise = _side_views(toy_views, informative=False)
    with_noise = ResidualModel(residuals=linear, side_blocks=["side"], **kw).fit(noise, y_train)
    report = with_noise.guard_report_["scratch"]
    assert report["side_share"] == 0 and set(report["cv_loss_by_side_share"]) >= {0.0, 1.0}
    assert "C" in report["side_block"]
    # refused: the fit is the one without the block, which is not read at all
    np.testing.assert_allclose(
        with_noise.predict_proba(noise), plain.fit(noise, y_train).predict_proba(noise), atol=1e-6
    )
    assert "side" not in with_noise.predictor_.mean

    signal = _side_views(toy_views, informative=True)
    model = ResidualModel(residuals=linear, side_blocks=["side"], **kw).fit(signal, y_train)
    assert model.guard_report_["scratch"]["side_share"] > 0
    y = toy_views["y"]
    assert _acc(model, signal, y, mask) > _acc(plain.fit(signal, y_train), signal, y, mask) + 0.1
    model.save(tmp_path / "m")
    again = ResidualModel.load(tmp_path / "m", progress=False)
    np.testing.assert_allclose(again.predict_proba(signal), model.predict_proba(signal), atol=1e-6)


def test_side_blocks_are_checked_in_one_line():
    linear = {"feat": ("linear", {}), "side": ("linear", {})}
    with pytest.raises(ScResidualError, match="not views of the model"):
        ResidualModel(residuals=linear, side_blocks=["nope"], solver="newton-cg")
    with pytest.raises(ScResidualError, match="every residual view is a side block"):
        ResidualModel(residuals={"side": ("linear", {})}, side_blocks=["side"], solver="newton-cg")
    with pytest.raises(ScResidualError, match="exact engine only"):
        ResidualModel(residuals=linear, side_blocks=["side"], solver="adam")
