import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from anndata import AnnData  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from scresidual import ScResidualError, pl  # noqa: E402

ORDER = ["medulla", "cortex", "follicle"]  # anatomical, not alphabetical


def _slide(width: float, height: float, n: int = 60) -> AnnData:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1, (n, 2)) * [width, height]
    truth = pd.Categorical(rng.choice(ORDER, n), categories=ORDER)
    a = AnnData(np.zeros((n, 1), np.float32), obsm={"spatial": xy})
    a.obs["region"] = truth
    a.obs.loc[a.obs_names[:10], "region"] = np.nan  # unlabelled spots
    a.obs["region_pred"] = pd.Categorical(rng.choice(ORDER, n), categories=sorted(ORDER))
    a.obs["region_train"] = np.arange(n) % 5 == 0
    return a


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_region_map_has_title_and_legend_for_unlabelled_and_training_spots():
    fig = pl.regions(_slide(100, 100), labels_key="region", return_fig=True)
    assert fig._suptitle is not None and "region" in fig._suptitle.get_text()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [*ORDER, "unlabelled", "training spot"]  # the categorical order


def test_region_map_follows_the_slide_aspect_ratio():
    wide = pl.regions(_slide(400, 100), labels_key="region", return_fig=True).get_size_inches()
    tall = pl.regions(_slide(100, 400), labels_key="region", return_fig=True).get_size_inches()
    assert wide[0] / wide[1] > 4  # two wide panels side by side
    assert tall[0] / tall[1] < 1.2  # two narrow panels and the legend


def test_confusion_is_labelled_row_normalised_and_follows_class_order():
    a = _slide(100, 100)
    ax = pl.confusion(a, labels_key="region")
    assert "row-normalised" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == ORDER
    mine = ["follicle", "medulla", "cortex"]
    ax = pl.confusion(a, labels_key="region", order=mine)
    assert [t.get_text() for t in ax.get_xticklabels()] == mine


def _arm_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"arm": arm, "evaluated_on": "held-out", "macro_f1": f1}
            for arm, f1 in (("refine", 0.8), ("scratch", 0.7), ("adapter", 0.6))
        ]
    )


def _predicted(n: int = 40) -> AnnData:
    """A slide with predictions and an uncertainty column, as ``predict`` writes them."""
    a = _slide(100, 100, n)
    a.obs["region_uncertainty"] = np.linspace(0, 0.5, n)
    return a


def test_regions_returns_two_panels_with_every_spot_and_one_legend():
    a = _slide(100, 100)
    axes = pl.regions(a, labels_key="region", train_key="region_train")
    assert isinstance(axes, list) and len(axes) == 2
    assert [ax.get_title() for ax in axes] == ["true regions", "predicted regions"]
    for ax in axes:
        assert len(ax.collections[0].get_offsets()) == a.n_obs  # the coloured spots
        assert ax.yaxis_inverted()  # image coordinates: y grows downwards
    assert len(axes[0].collections) == 2  # + the training spots' outlines
    assert len(axes[0].figure.legends[0].get_texts()) == len(ORDER) + 2


def test_regions_on_one_slide_draws_only_its_spots():
    a = _slide(100, 100)
    a.obs["slide"] = np.where(np.arange(a.n_obs) < 25, "s1", "s2")
    axes = pl.regions(a, labels_key="region", library_key="slide", slide="s1")
    assert len(axes[1].collections[0].get_offsets()) == 25
    assert "slide s1" in axes[0].figure._suptitle.get_text()


def test_regions_draws_into_given_axes():
    fig, given = plt.subplots(1, 2)
    n_figures = len(plt.get_fignums())
    axes = pl.regions(_slide(100, 100), labels_key="region", ax=given)
    assert axes == list(given) and len(plt.get_fignums()) == n_figures
    assert not fig.legends and fig._suptitle is None  # the caller's figure: no figure title
    labels = [t.get_text() for t in given[1].get_legend().get_texts()]
    assert labels == [*ORDER, "unlabelled", "training spot"]
    pl.regions(_slide(100, 100), labels_key="region", ax=given, title="mine")
    assert fig._suptitle.get_text() == "mine"


@pytest.mark.parametrize("ax", ["one", "three", "text"])
def test_regions_wants_two_axes(ax):
    axes = plt.subplots(1, 3)[1]
    bad = {"one": axes[0], "three": axes, "text": ["a", "b"]}[ax]
    with pytest.raises(ScResidualError, match="pair of Axes"):
        pl.regions(_slide(100, 100), labels_key="region", ax=bad)


@pytest.mark.parametrize(
    "plot",
    [
        lambda **kw: pl.confusion(_slide(100, 100), labels_key="region", **kw),
        lambda **kw: pl.arms(_arm_rows(), **kw),
        lambda **kw: pl.uncertainty(_predicted(), key="region", **kw),
    ],
    ids=["confusion", "arms", "uncertainty"],
)
def test_single_panel_plots_draw_into_given_axes_and_return_them(plot):
    fig, ax = plt.subplots()
    n_figures = len(plt.get_fignums())
    assert plot(ax=ax) is ax
    assert len(plt.get_fignums()) == n_figures
    assert ax.get_title()
    new = plot()
    assert isinstance(new, Axes) and new.figure is not fig
    assert isinstance(plot(return_fig=True), Figure)
    with pytest.raises(ScResidualError, match="ax must be a matplotlib Axes"):
        plot(ax=fig)


def test_uncertainty_map_has_one_point_per_spot_and_a_colour_bar():
    a = _predicted(40)
    ax = pl.uncertainty(a, key="region")
    points = ax.collections[0]
    assert len(points.get_offsets()) == a.n_obs
    assert np.allclose(points.get_array(), a.obs["region_uncertainty"])
    assert len(ax.child_axes) == 1  # the map's colour bar
    assert ax.get_legend() is None  # nothing suggested


def _grid(n_side: int = 30, step: float = 100.0) -> AnnData:
    xs, ys = np.meshgrid(np.arange(n_side) * step, np.arange(n_side) * step * 0.5)
    xy = np.c_[xs.ravel(), ys.ravel()]
    n = len(xy)
    a = AnnData(np.zeros((n, 1), np.float32), obsm={"spatial": xy})
    a.obs["region"] = pd.Categorical(np.where(xy[:, 0] < 1500, "cortex", "medulla"))
    a.obs["region_pred"] = a.obs["region"]
    a.obs["region_uncertainty"] = np.linspace(0, 0.6, n)
    return a


def _dot_and_gap_in_pixels(ax: Axes, step: float) -> tuple[float, float]:
    """Drawn diameter of the first collection's dots, and the neighbour spacing, in pixels."""
    ax.figure.canvas.draw()
    gap = ax.transData.transform([[step, 0]]) - ax.transData.transform([[0, 0]])
    dots = ax.collections[0]
    if hasattr(dots, "get_widths"):  # sized in data units
        wide = ax.transData.transform([[dots.get_widths()[0], 0]]) - ax.transData.transform(
            [[0, 0]]
        )
        return float(np.abs(wide[0, 0])), float(np.abs(gap[0, 0]))
    points = np.sqrt(dots.get_sizes()[0])  # scatter sizes: points squared
    return points * ax.figure.dpi / 72, float(np.abs(gap[0, 0]))


@pytest.mark.parametrize("plot", ["regions", "uncertainty"])
def test_maps_have_readable_dots_tight_margins_and_a_scale_bar(plot):
    # 900 spots 100 units apart in x, 50 in y: a Visium-like grid.
    a = _grid()
    if plot == "regions":
        ax = pl.regions(a, labels_key="region", units="µm")[0]
    else:
        ax = pl.uncertainty(a, key="region", units="µm")
    dot, gap = _dot_and_gap_in_pixels(ax, 50.0)
    assert 0.7 * gap <= dot <= 1.1 * gap  # dots nearly touch: the tissue reads as a surface
    x0, x1 = sorted(ax.get_xlim())
    assert (x1 - x0) - 2900 <= 2 * 50 + 1e-6  # a margin of at most one spot each side
    bars = [c for c in ax.artists if "µm" in "".join(t.get_text() for t in c.findobj(Text))]
    assert len(bars) == 1
    assert "500 µm" in [t.get_text() for t in bars[0].findobj(Text)]


def test_uncertainty_colour_bar_is_no_taller_than_the_map():
    for width, height in ((3000, 500), (500, 3000), (1000, 1000)):
        a = _grid()
        a.obsm["spatial"] = a.obsm["spatial"] * [width / 2900, height / 1450]
        ax = pl.uncertainty(a, key="region")
        fig = ax.figure
        fig.canvas.draw()
        box = ax.get_window_extent()
        bar = [x for x in [*fig.axes, *ax.child_axes] if x is not ax][0].get_window_extent()
        assert bar.height <= box.height + 1 and bar.y0 >= box.y0 - 1, (width, height)


def test_confusion_counts_labelled_spots_only():
    a = _slide(100, 100)
    ax = pl.confusion(a, labels_key="region", normalize=False)
    counts = ax.images[0].get_array()
    assert counts.sum() == a.obs["region"].notna().sum()
    assert "spot counts" in ax.get_title()


def test_arm_chart_has_one_bar_group_and_legend_entry_per_arm():
    ax = pl.arms(_arm_rows())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["refine", "scratch", "adapter"]
    assert sum(len(c) for c in ax.containers) == 3
    with pytest.raises(ScResidualError, match="no column 'nope'"):
        pl.arms(_arm_rows(), metric="nope")


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_save_writes_the_figure_atomically(tmp_path, suffix, magic):
    path = tmp_path / "figures" / f"regions{suffix}"
    axes = pl.regions(_slide(100, 100), labels_key="region", save=path)
    assert len(axes) == 2  # saving still returns the axes
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    png = tmp_path / "arms.png"
    pl.arms(_arm_rows(), save=str(png))
    assert png.read_bytes().startswith(b"\x89PNG")


def test_save_refuses_to_replace_a_folder(tmp_path):
    folder = tmp_path / "plot.png"
    (folder / "keep").mkdir(parents=True)
    with pytest.raises(ScResidualError, match="refused to replace"):
        pl.arms(_arm_rows(), save=folder)
    assert (folder / "keep").is_dir()


def test_show_shows_and_returns_nothing(monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(True))
    assert pl.arms(_arm_rows()) is not None and not shown  # default: no show
    assert pl.arms(_arm_rows(), show=False) is not None and not shown
    assert pl.arms(_arm_rows(), show=True) is None and shown == [True]
    assert isinstance(pl.arms(_arm_rows(), show=True, return_fig=True), Figure)


def test_class_order_takes_predictions_into_account():
    a = _slide(100, 100)
    a.obs["other_pred"] = "elsewhere"
    assert pl.class_order(a, labels_key="region") == ORDER
    assert pl.class_order(a, labels_key="region", pred_key="other_pred") == [*ORDER, "elsewhere"]
    assert pl.class_order(a, labels_key="region", order=["cortex"]) == [
        "cortex",
        "follicle",
        "medulla",
    ]


def test_arm_chart_shows_values_and_error_bars_over_seeds():
    rows = [
        {"arm": arm, "evaluated_on": "held-out", "macro_f1": f1 + 0.02 * seed, "seed": seed}
        for seed in (0, 1, 2)
        for arm, f1 in (("refine", 0.8), ("scratch", 0.7))
    ]
    ax = pl.arms(pd.DataFrame(rows))
    texts = {t.get_text() for t in ax.texts}
    assert {"0.82", "0.72"} <= texts  # the means, written on the bars
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    assert "3 runs" in ax.get_title()
    single = pl.arms(pd.DataFrame(rows[:2]))
    assert not any(isinstance(c, ErrorbarContainer) for c in single.containers)
