"""The annotation widget's state: selection → labels, undo/redo, refit, autosave, bad input."""

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import scresidual as sr
from scresidual._errors import ScResidualError
from scresidual._labels_file import read_labels_csv


@pytest.fixture(scope="module")
def slide():
    return sr.datasets.lymph_node(n_slides=1, spots_per_side=20)


@pytest.fixture
def adata(slide):
    return slide.copy()


def _seed_labels(ann, truth, per_region=6):
    """Label ``per_region`` cells of each region with at least that many cells."""
    for region in pd.unique(truth):
        cells = np.flatnonzero(truth == region)[:per_region]
        if len(cells) == per_region:
            ann.select(cells)
            ann.assign(region)


def test_selection_becomes_labels_in_obs_and_autosave(adata, tmp_path):
    path = tmp_path / "labels.csv"
    ann = sr.pl.annotate(adata, "annot", autosave=path)
    assert ann.n_labelled == 0 and "annot" in adata.obs
    mask = np.zeros(adata.n_obs, bool)
    mask[:10] = True
    ann.select(mask)
    ann.assign("follicle")
    ann.select(adata.obs_names[10:13])  # names
    ann.assign("sinus")
    ann.select([20, 21])  # positions
    ann.assign("follicle")
    obs = adata.obs["annot"]
    assert isinstance(obs.dtype, pd.CategoricalDtype)
    assert list(obs.cat.categories) == ["follicle", "sinus"]
    assert (obs.iloc[:10] == "follicle").all() and (obs.iloc[10:13] == "sinus").all()
    assert obs.iloc[[20, 21]].eq("follicle").all() and obs.isna().sum() == adata.n_obs - 15
    assert ann.message == "2 cells labelled 'follicle' (15 labelled)"
    saved = read_labels_csv(path)
    assert saved.to_dict() == ann.labels.dropna().to_dict()


def test_lasso_in_the_plot_selects_and_assign_needs_a_selection(adata):
    ann = sr.pl.annotate(adata, "annot")
    ann.assign("follicle")
    assert ann.message.startswith("nothing selected") and ann.n_labelled == 0
    ann.view.plot.selection = np.array([3, 1, 2], dtype=np.uint32)  # what a lasso sends
    assert ann.selection.tolist() == [1, 2, 3]
    ann.select([5, 6])  # Python → plot
    assert sorted(ann.view.plot.selection.tolist()) == [5, 6]
    ann.assign("  ")
    assert ann.message.startswith("type a region") and ann.n_labelled == 0
    with pytest.raises(ScResidualError, match="not in adata.obs_names"):
        ann.select(["no-such-cell"])
    with pytest.raises(ScResidualError, match="one value per cell"):
        ann.select(np.ones(3, bool))


def test_undo_redo_and_erase(adata, tmp_path):
    path = tmp_path / "labels.csv"
    ann = sr.pl.annotate(adata, "annot", autosave=path)
    ann.select(range(0, 10))
    ann.assign("a")
    ann.select(range(5, 15))
    ann.assign("b")
    after_b = ann.labels.copy()
    ann.select(range(0, 3))
    ann.erase()
    assert adata.obs["annot"].iloc[:3].isna().all() and ann.n_labelled == 12
    ann.undo()  # the erase
    ann.undo()  # "b"
    assert ann.labels.iloc[:10].eq("a").all() and ann.labels.iloc[10:].isna().all()
    assert read_labels_csv(path).to_dict() == ann.labels.dropna().to_dict()
    ann.redo()
    pd.testing.assert_series_equal(ann.labels, after_b)
    ann.redo()
    assert ann.labels.iloc[:3].isna().all()
    ann.redo()
    assert ann.message == "nothing to redo"
    ann.undo()
    ann.select([40])
    ann.assign("c")  # a new change drops what could be redone
    ann.redo()
    assert ann.message == "nothing to redo"


def test_refit_updates_predictions_suggestions_and_colours(adata, monkeypatch):
    from scresidual.model import _spatial_views

    computed = []
    compute = _spatial_views.spatial_views
    monkeypatch.setattr(
        _spatial_views, "spatial_views", lambda m, a: computed.append(1) or compute(m, a)
    )
    truth = adata.obs["region"].astype(str).to_numpy()
    ann = sr.pl.annotate(adata, "annot", n_suggestions=10, auto_refit=36)
    ann.select(range(5))
    ann.assign(truth[0])
    ann.refit()
    assert ann.message.startswith("only one region labelled") and ann.predictions is None
    _seed_labels(ann, truth)  # 5 + 6 x 6 labels: the 36th starts a refit in the background
    assert ann.refitting or ann.predictions is not None
    ann.wait()
    assert ann.message.startswith("refit on"), ann.message
    first = ann.predictions.copy()
    assert first.index.equals(adata.obs_names) and set(first) <= set(ann.regions)
    assert (adata.obs["annot_pred"].astype(str).to_numpy() == first.to_numpy()).all()
    assert ann.uncertainty.between(0, 1).all() and "annot_proba" in adata.obsm
    assert len(ann.suggestions) == 10 and not ann.labels[ann.suggestions].notna().any()
    assert adata.obs["annot_suggested"].sum() == 10
    assert [v for _, v in ann.view.suggested.options] == ann.suggestions
    assert len(ann.view.scatter.annotations()["annotations"]) == 10  # the suggestions are ringed
    # Colours are sr.pl's: the palette of the regions in display order.
    ann.view.colour.value = "prediction"
    mapping = ann.view.scatter.color()["map"]
    expected = sr.pl._plots._palette(ann.regions)
    assert len(mapping) == len(expected) + 1  # + unlabelled grey
    assert np.allclose(mapping[0], expected[ann.regions[0]])
    # Labelling the suggestions (their true regions) and refitting changes the predictions.
    ann.select(ann.suggestions)
    for cell in ann.suggestions:
        ann.select([cell])
        ann.assign(truth[adata.obs_names.get_loc(cell)])
    ann.view.suggested.value = ann.suggestions[0]  # the list zooms to and selects a cell
    assert ann.selection.tolist() == [adata.obs_names.get_loc(ann.suggestions[0])]
    ann.refit()
    assert not ann.predictions.equals(first)
    assert len(computed) == 1  # the graph and features of the slide, once for both refits
    accuracy = (ann.predictions.to_numpy() == truth).mean()
    assert accuracy > 1 / len(ann.regions)


def test_candidates_limit_suggestions_and_one_label_per_region_refits(adata):
    truth = adata.obs["region"].astype(str).to_numpy()
    left = adata.obsm["spatial"][:, 0] < np.median(adata.obsm["spatial"][:, 0])
    ann = sr.pl.annotate(adata, "annot", n_suggestions=15, candidates=left, seed=1)
    rare = pd.Series(truth).value_counts().index[-1]
    for region in pd.unique(truth):
        ann.select(np.flatnonzero(truth == region)[: 1 if region == rare else 4])
        ann.assign(region)  # the rare region has one labelled cell: the fit still takes it
    ann.refit()
    assert ann.message.startswith("refit on"), ann.message
    assert rare in ann.model.classes_
    cells = adata.obs_names.get_indexer(ann.suggestions)
    assert len(cells) == 15 and left[cells].all()
    adata.obs["right"] = ~left
    ann.candidates = "right"  # an obs column works too, from the next refit on
    ann.refit()
    assert (~left[adata.obs_names.get_indexer(ann.suggestions)]).all()
    with pytest.raises(ScResidualError, match="excludes every cell"):
        ann.candidates = np.zeros(adata.n_obs, dtype=bool)
    with pytest.raises(ScResidualError, match="boolean mask of the"):
        sr.pl.annotate(adata, "annot", candidates=[0, 1])


def test_autosave_restores_after_a_crash_and_erase(adata, slide, tmp_path):
    path = tmp_path / "labels.csv"
    ann = sr.pl.annotate(adata, "annot", autosave=path)
    ann.select(range(12))
    ann.assign("a")
    ann.select(range(4))
    ann.erase()
    fresh = slide.copy()
    fresh.obs["annot"] = "stale"  # the file is a full snapshot: it wins
    restored = sr.pl.restore_annotation(fresh, path, labels_key="annot")
    pd.testing.assert_series_equal(restored, ann.labels, check_names=False)
    assert fresh.obs["annot"].iloc[:4].isna().all() and fresh.obs["annot"].notna().sum() == 8
    again = sr.pl.annotate(slide.copy(), "annot", autosave=path)  # run the cell again
    assert again.message == f"restored 8 labels from {path}"
    pd.testing.assert_series_equal(again.labels, ann.labels)


def test_spatialdata_labels_go_into_its_table(zarr_store):
    import spatialdata

    sdata = spatialdata.read_zarr(zarr_store)
    table = sdata.tables["table"]
    ann = sr.pl.annotate(sdata, "annot")
    ann.select(range(6))
    ann.assign("follicle")
    assert table.obs["annot"].iloc[:6].eq("follicle").all()
    assert table.obs["annot"].notna().sum() == 6


def test_bad_input_is_one_line(adata, slide, tmp_path):
    def one_line(err):
        assert "\n" not in str(err.value)

    with pytest.raises(ScResidualError, match="no spatial coordinates") as err:
        sr.pl.annotate(AnnData(np.ones((5, 3), np.float32)), "annot")
    one_line(err)
    with pytest.raises(ScResidualError, match="obs key 'batch' not found") as err:
        sr.pl.annotate(adata, "annot", library_key="batch")
    one_line(err)
    with pytest.raises(ScResidualError, match="AnnData or a SpatialData") as err:
        sr.pl.annotate(adata.obs, "annot")
    one_line(err)
    twice = adata[[0, 0, 1]].copy()
    with pytest.raises(ScResidualError, match="duplicate cell names") as err:
        sr.pl.annotate(twice, "annot")
    one_line(err)
    with pytest.raises(ScResidualError, match="auto_refit") as err:
        sr.pl.annotate(adata, "annot", auto_refit="10")
    one_line(err)
    ann = sr.pl.annotate(adata, "annot")
    ann.view.colour.value = "uncertainty"  # before any refit: a message, not an error
    assert "no uncertainty yet" in ann.view.message.value
    other = tmp_path / "other.csv"
    other.write_text("cell_id,annot\nsomeone_else_1,a\nsomeone_else_2,b\n")
    with pytest.raises(ScResidualError, match="not an autosave of this slide") as err:
        sr.pl.restore_annotation(slide.copy(), other, labels_key="annot")
    one_line(err)
    binary = tmp_path / "labels.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    before = binary.read_bytes()
    with pytest.raises(ScResidualError, match="is not a labels CSV") as err:
        sr.pl.annotate(adata, "annot", autosave=binary)
    one_line(err)
    assert binary.read_bytes() == before  # never overwritten
    with pytest.raises(ScResidualError, match="labels file not found"):
        sr.pl.restore_annotation(adata, tmp_path / "missing.csv", labels_key="annot")


def test_missing_widget_library_names_the_extra(adata, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "jscatter", None)
    with pytest.raises(ScResidualError, match=r"pip install 'scresidual\[widget\]'"):
        sr.pl.annotate(adata, "annot")
