"""Suggesting the next labels: sr.tl.suggest_labels and `scresidual suggest`."""

import numpy as np
import pandas as pd
import pytest
from matplotlib import pyplot as plt

from scresidual import ScResidualError, pl, tl
from scresidual.cli import main
from scresidual.tl._suggest import _pick_balanced  # white-box: the picking rules


@pytest.fixture(scope="module")
def annotated(small_slides):
    """Both slides, 10% labelled, and the default model fitted on those labels."""
    a = small_slides.copy()
    rng = np.random.default_rng(3)
    a.obs["train"] = a.obs["region"].astype(object).where(rng.random(a.n_obs) < 0.1, None)
    return a, tl.fit_regions(a, labels_key="train", library_key="slide", progress=False)


def test_suggests_n_unlabelled_cells_spread_over_the_tissue(annotated):
    a, model = annotated
    before = a.obs.copy()
    table, marked = tl.suggest_labels(a, model, n=40, copy=True)
    pd.testing.assert_frame_equal(a.obs, before)  # copy=True leaves adata alone
    assert len(table) == 40 and table.index.is_unique
    assert a.obs.loc[table.index, "train"].isna().all()  # only unlabelled cells
    assert marked.obs["train_suggested"].sum() == 40
    assert set(marked.obs_names[marked.obs["train_suggested"]]) == set(table.index)
    assert {"x", "y", "prediction", "score", "uncertainty", "slide"} <= set(table.columns)
    assert set(table["slide"]) == {"slide1", "slide2"}
    # Spread: not the 40 neighbours of one boundary. Their mean pairwise distance is a
    # sizeable part of the slide's, and more than the most uncertain cells' on one slide.
    xy = table[["x", "y"]].to_numpy()
    span = np.ptp(a.obsm["spatial"], axis=0).max()
    one = table["slide"] == "slide1"
    d = np.linalg.norm(xy[one.to_numpy()][:, None] - xy[one.to_numpy()][None], axis=-1)
    assert d[np.triu_indices(len(d), 1)].mean() > 0.25 * span
    # The cells' predictions cover most classes (rare ones included), not one pair.
    assert table["prediction"].nunique() >= 4


def test_suggestions_are_deterministic_and_differ_by_strategy(annotated):
    a, model = annotated
    b = a.copy()
    first = tl.suggest_labels(b, model, n=25, seed=1, key_added="pick")
    again = tl.suggest_labels(b, model, n=25, seed=1, key_added="pick")
    assert list(first.index) == list(again.index)
    assert b.obs["pick"].sum() == 25 and "train_suggested" not in b.obs
    unc = tl.suggest_labels(b, model, n=25, strategy="uncertainty")
    assert np.all(np.diff(unc["uncertainty"].to_numpy()) <= 1e-12)  # most uncertain first
    rnd = tl.suggest_labels(b, model, n=25, strategy="random", seed=0)
    assert set(rnd.index) != set(unc.index) != set(first.index)
    assert unc["uncertainty"].mean() > rnd["uncertainty"].mean()
    only = (b.obs["slide"] == "slide2").to_numpy()
    picked = tl.suggest_labels(b, model, n=10, candidates=only)
    assert (picked["slide"] == "slide2").all()


def test_rare_predicted_classes_get_their_share_of_a_round():
    # 950 cells predicted as a well-labelled class score higher than 50 predicted as a rare
    # one; the rare class's weight (4 vs 1) still gives it 4/5 of the picks.
    rng = np.random.default_rng(0)
    predicted = np.r_[np.zeros(950, int), np.ones(50, int), np.full(0, 2)]
    score = np.where(predicted == 0, 0.9, 0.2) + 0.01 * rng.random(1000)
    rep = rng.normal(size=(1000, 3))
    weight = np.array([1.0, 4.0, 9.0])  # class 2 is predicted nowhere: no share
    picked = _pick_balanced(score, rep, predicted, weight, 10, 0)
    assert len(picked) == 10 and len(set(picked)) == 10
    assert (predicted[picked] == 1).sum() == 8 and (predicted[picked] == 0).sum() == 2
    # A class with fewer cells than its share gives what it has; the rest come from all.
    few = np.r_[np.zeros(995, int), np.ones(5, int)]
    picked = _pick_balanced(score, rep, few, weight[:2], 10, 0)
    assert len(set(picked)) == 10 and (few[picked] == 1).sum() == 5


def test_bad_suggest_options_fail_clearly(annotated):
    a, model = annotated
    with pytest.raises(ScResidualError, match="unlabelled"):
        tl.suggest_labels(a, model, n=a.n_obs)
    with pytest.raises(ScResidualError, match="at least 1"):
        tl.suggest_labels(a, model, n=0)
    with pytest.raises(ScResidualError, match="strategy"):
        tl.suggest_labels(a, model, strategy="greedy")
    with pytest.raises(ScResidualError, match="nope"):
        tl.suggest_labels(a, model, labels_key="nope")
    with pytest.raises(ScResidualError, match="boolean mask"):
        tl.suggest_labels(a, model, candidates=np.ones(3, bool))


def test_regions_and_uncertainty_maps_show_suggestions(annotated):
    a, model = annotated
    out = model.predict(a, copy=True)
    tl.suggest_labels(out, model, n=20)
    fig = pl.regions(out, labels_key="train", library_key="slide", slide="slide1", return_fig=True)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "suggested for labelling" in labels
    ax = pl.uncertainty(out, key="train")
    assert "suggested for labelling" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close("all")


def test_cli_suggest_writes_a_csv(annotated, tmp_path, capsys):
    a, model = annotated
    model.save(tmp_path / "m")
    slide = tmp_path / "slide.h5ad"
    a.write_h5ad(slide)
    before = slide.read_bytes()
    out = tmp_path / "next.csv"
    code = main(
        ["suggest", str(tmp_path / "m"), str(slide), "--n", "15", "--output", str(out), "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out, index_col="obs_name")
    assert len(table) == 15 and a.obs.loc[table.index, "train"].isna().all()
    assert list(table.index) == list(tl.suggest_labels(a.copy(), model, n=15).index)
    assert slide.read_bytes() == before  # the input is never modified
    for argv, what in [
        (["--n", "0"], "--n must be at least 1"),
        (["--n", str(a.n_obs)], "unlabelled"),
        (["--labels-key", "nope"], "nope"),
    ]:
        code = main(
            [
                "suggest",
                str(tmp_path / "m"),
                str(slide),
                "--output",
                str(tmp_path / "x.csv"),
                "--quiet",
                *argv,
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert what in err
    code = main(["suggest", str(tmp_path / "m"), str(slide), "--output", str(tmp_path / "x.txt")])
    assert code == 2 and ".csv" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
