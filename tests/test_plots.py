import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from anndata import AnnData  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from scresidual import pl  # noqa: E402

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
    fig = pl.regions(_slide(100, 100), labels_key="region")
    assert fig._suptitle is not None and "region" in fig._suptitle.get_text()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [*ORDER, "unlabelled", "training spot"]  # the categorical order


def test_region_map_follows_the_slide_aspect_ratio():
    wide = pl.regions(_slide(400, 100), labels_key="region").get_size_inches()
    tall = pl.regions(_slide(100, 400), labels_key="region").get_size_inches()
    assert wide[0] / wide[1] > 4  # two wide panels side by side
    assert tall[0] / tall[1] < 1.2  # two narrow panels and the legend


def test_confusion_is_labelled_row_normalised_and_follows_class_order():
    a = _slide(100, 100)
    ax = pl.confusion(a, labels_key="region").axes[0]
    assert "row-normalised" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == ORDER
    mine = ["follicle", "medulla", "cortex"]
    ax = pl.confusion(a, labels_key="region", order=mine).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == mine


def test_arm_chart_shows_values_and_error_bars_over_seeds():
    rows = [
        {"arm": arm, "evaluated_on": "held-out", "macro_f1": f1 + 0.02 * seed, "seed": seed}
        for seed in (0, 1, 2) for arm, f1 in (("refine", 0.8), ("scratch", 0.7))
    ]
    ax = pl.arms(pd.DataFrame(rows)).axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert {"0.82", "0.72"} <= texts  # the means, written on the bars
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    assert "3 runs" in ax.get_title()
    single = pl.arms(pd.DataFrame(rows[:2])).axes[0]
    assert not any(isinstance(c, ErrorbarContainer) for c in single.containers)
