"""Plots of region maps, confusion matrices and arm comparisons (matplotlib, scanpy-like)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from .._constants import SPATIAL_KEY, pred_key, suggested_key, train_key
from .._validate import check_obs_key, check_spatial

UNLABELLED = "unlabelled"
"""Legend label of spots without a true label (drawn grey)."""

_GREY = (0.85, 0.85, 0.85, 1.0)


def _palette(categories) -> dict:
    cmap = plt.get_cmap("tab20" if len(categories) > 10 else "tab10")
    return {c: cmap(i % cmap.N) for i, c in enumerate(categories)}


def _finish(fig: Figure, save: str | None, show: bool | None) -> Figure | None:
    if save:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show:
        plt.show()
        return None
    return fig


def class_order(
    adata: AnnData, labels_key: str, pred_key_: str, order: Sequence[str] | None = None
) -> list[str]:
    """Classes in display order.

    ``order`` if given, else the categorical order of ``obs[labels_key]`` (e.g. anatomical,
    as in :func:`scresidual.datasets.lymph_node`), else sorted. Classes that occur but are
    missing from that order are appended, sorted.
    """
    present = {
        str(v) for k in (labels_key, pred_key_) for v in adata.obs[k].dropna().unique()
    }
    if order is None:
        labels = adata.obs[labels_key]
        is_cat = isinstance(labels.dtype, pd.CategoricalDtype)
        order = list(labels.cat.categories) if is_cat else []
    order = [str(c) for c in order]
    return [c for c in order if c in present] + sorted(present - set(order))


def _slide_mask(adata: AnnData, library_key: str | None, slide) -> np.ndarray:
    """Cells of ``slide`` in ``obs[library_key]``; every cell when either is None."""
    if library_key is None or slide is None:
        return np.ones(adata.n_obs, bool)
    check_obs_key(adata, library_key)
    return (adata.obs[library_key].astype(str) == str(slide)).to_numpy()


def _figsize(
    xy: np.ndarray, n_panels: int, height: float = 5.0, max_width: float = 14.0
) -> tuple[float, float]:
    """Panels shaped like the slide (width / height of its extent), plus a legend column.

    ``height`` inches, lowered for wide slides so that the panels fit in ``max_width``.
    """
    extent = np.ptp(xy[:, :2], axis=0) if len(xy) else np.ones(2)
    aspect = float(np.clip(extent[0] / max(extent[1], 1e-9), 0.1, 10.0))
    height = min(height, max_width / (n_panels * aspect))
    return n_panels * height * aspect + 2.5, height


def regions(
    adata: AnnData,
    *,
    labels_key: str,
    pred_key_: str | None = None,
    train_key_: str | None = None,
    highlight: str | None = None,
    spatial_key: str = SPATIAL_KEY,
    library_key: str | None = None,
    slide: str | None = None,
    order: Sequence[str] | None = None,
    point_size: float | None = None,
    title: str | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Figure | None:
    """True and predicted regions side by side on the slide.

    Spots without a true label are grey (legend: ``'unlabelled'``, if there are any); spots
    whose labels were trained on are outlined (legend: ``'training spot'``). The figure's
    width follows the slide's aspect ratio.

    Parameters
    ----------
    adata
        Slide with ``obs[labels_key]`` and ``obs['<labels_key>_pred']``.
    labels_key
        True labels.
    pred_key_
        Predictions (default ``'<labels_key>_pred'``).
    train_key_
        Boolean ``obs`` column of training spots (default ``'<labels_key>_train'`` when
        present, as written by ``scresidual fit --output`` and the demo).
    highlight
        Boolean ``obs`` column of spots to mark with a red ring on both panels (legend:
        ``'suggested for labelling'``); default ``'<labels_key>_suggested'`` when present,
        as written by :func:`scresidual.tl.suggest_labels`.
    spatial_key
        Coordinates.
    library_key, slide
        Show only cells of ``slide`` in ``obs[library_key]``.
    order
        Class order of the legend (default: see :func:`class_order`).
    point_size
        Marker size (default from the number of cells).
    title
        Figure title (default: the labels key, and the slide if one is chosen).
    show, save
        Show the figure / save it to a file; returns the figure unless shown.

    """
    pk = pred_key_ or pred_key(labels_key)
    check_obs_key(adata, labels_key)
    check_obs_key(adata, pk)
    tk = train_key_ or train_key(labels_key)
    if train_key_ is not None:
        check_obs_key(adata, tk)
    hk = highlight or suggested_key(labels_key)
    if highlight is not None:
        check_obs_key(adata, hk)
    xy = check_spatial(adata, spatial_key)
    mask = _slide_mask(adata, library_key, slide)
    unlabelled = adata.obs[labels_key].isna().to_numpy()
    truth = np.where(unlabelled, UNLABELLED, adata.obs[labels_key].astype(str).to_numpy())
    pred = adata.obs[pk].astype(str).to_numpy()
    trained = adata.obs[tk].to_numpy(bool) if tk in adata.obs else np.zeros(adata.n_obs, bool)
    marked = mask & (adata.obs[hk].to_numpy(bool) if hk in adata.obs else False)
    cats = class_order(adata, labels_key, pk, order)
    colours = _palette(cats)
    size = point_size or max(2.0, 8000 / max(mask.sum(), 1))
    fig, axes = plt.subplots(
        1, 2, figsize=_figsize(xy[mask], 2), sharex=True, sharey=True, layout="constrained"
    )
    for ax, values, name in zip(axes, (truth, pred), ("true", "predicted"), strict=True):
        c = [colours.get(v, _GREY) for v in values[mask]]
        ax.scatter(xy[mask, 0], xy[mask, 1], c=c, s=size, linewidths=0)
        if name == "true" and trained[mask].any():
            t = mask & trained
            ax.scatter(xy[t, 0], xy[t, 1], s=size, facecolors="none", edgecolors="black",
                       linewidths=0.6)
        if marked.any():
            ax.scatter(xy[marked, 0], xy[marked, 1], s=6 * size, facecolors="none",
                       edgecolors="red", linewidths=1.0)
        ax.set_title(f"{name} regions")
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours[c], label=c) for c in cats]
    if unlabelled[mask].any():
        handles.append(plt.Line2D([], [], ls="", marker="o", color=_GREY, label=UNLABELLED))
    if trained[mask].any():
        handles.append(plt.Line2D([], [], ls="", marker="o", markerfacecolor="none",
                                  markeredgecolor="black", label="training spot"))
    if marked.any():
        handles.append(plt.Line2D([], [], ls="", marker="o", markerfacecolor="none",
                                  markeredgecolor="red", label="suggested for labelling"))
    fig.legend(handles=handles, loc="outside right center", frameon=False)
    where = f", {library_key} {slide}" if library_key is not None and slide is not None else ""
    fig.suptitle(title or f"{labels_key}: true and predicted regions{where}")
    return _finish(fig, save, show)


def confusion(
    adata: AnnData,
    *,
    labels_key: str,
    pred_key_: str | None = None,
    normalize: bool = True,
    order: Sequence[str] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Figure | None:
    """Confusion matrix of true (rows) vs predicted (columns) regions.

    With ``normalize`` each row is divided by its total (the fraction of a true region
    predicted as each region: recall on the diagonal), as the title says. Classes follow
    ``order``, else the categorical order of the labels (see :func:`class_order`).
    """
    pk = pred_key_ or pred_key(labels_key)
    check_obs_key(adata, labels_key)
    check_obs_key(adata, pk)
    truth = adata.obs[labels_key]
    keep = truth.notna().to_numpy()
    table = pd.crosstab(
        truth[keep].astype(str).to_numpy(), adata.obs[pk][keep].astype(str).to_numpy()
    )
    cats = class_order(adata, labels_key, pk, order)
    table = table.reindex(index=cats, columns=cats, fill_value=0)
    values = table.to_numpy(float)
    if normalize:
        values = values / np.maximum(values.sum(1, keepdims=True), 1)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right")
    ax.set_yticks(range(len(cats)), cats)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"{labels_key}: confusion matrix"
        + (" (row-normalised: each true region sums to 1)" if normalize else " (spot counts)"),
        fontsize=10,
    )
    for i in range(len(cats)):
        for j in range(len(cats)):
            v = values[i, j]
            ax.text(j, i, f"{v:.2f}" if normalize else int(v), ha="center", va="center",
                    fontsize=7, color="white" if v > 0.6 * values.max() else "black")
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("fraction of the true region" if normalize else "spots")
    fig.tight_layout()
    return _finish(fig, save, show)


def arms(
    results: pd.DataFrame,
    *,
    metric: str = "macro_f1",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Figure | None:
    """Bar chart of a metric per arm and evaluation set (:func:`scresidual.tl.compare_arms`).

    Bars are labelled with their values; with several rows per arm and evaluation set (e.g.
    one per seed) a bar is their mean and its error bar their standard deviation.
    """
    from .._errors import ScResidualError

    for col in ("arm", "evaluated_on", metric):
        if col not in results:
            raise ScResidualError(f"results have no column {col!r}; pass compare_arms() output.")
    grouped = results.groupby(["evaluated_on", "arm"], sort=False)[metric]
    table = grouped.mean().unstack("arm")
    spread = grouped.std().unstack("arm") if grouped.size().max() > 1 else None
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    table.plot.bar(ax=ax, rot=0, width=0.8, yerr=spread, capsize=3 if spread is not None else 0)
    for bars in ax.containers:
        if isinstance(bars, BarContainer):
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    n_runs = int(grouped.size().max())
    ax.set_ylabel(metric.replace("_", "-"))
    ax.set_ylim(0, 1.1)
    ax.set_title(
        f"{metric.replace('_', '-')} per arm"
        + (f" (mean ± sd over {n_runs} runs)" if spread is not None else "")
    )
    ax.legend(title="arm", frameon=False, ncols=2)
    ax.set_xlabel("")
    fig.tight_layout()
    return _finish(fig, save, show)
