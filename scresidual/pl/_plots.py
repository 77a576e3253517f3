"""Plots of region maps, confusion matrices and arm comparisons (matplotlib, scanpy-like)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from .. import _constants
from .._constants import SPATIAL_KEY, suggested_key
from .._docs import (
    doc_library_key_slide,
    doc_params,
    doc_return_fig,
    doc_save,
    doc_show,
    doc_spatial_key,
)
from .._errors import ScResidualError
from .._io import atomic_path
from .._validate import check_obs_key, check_spatial
from ._spots import DOT_FILL, doc_point_size, doc_units, dots, frame, spacing

UNLABELLED = "unlabelled"
"""Legend label of spots without a true label (drawn grey)."""

_GREY = (0.85, 0.85, 0.85, 1.0)


def _palette(categories) -> dict:
    cmap = plt.get_cmap("tab20" if len(categories) > 10 else "tab10")
    return {c: cmap(i % cmap.N) for i, c in enumerate(categories)}


def _figure(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """The figure of ``ax``, or a new figure with one axes."""
    if ax is None:
        return plt.subplots(figsize=figsize, layout="constrained")
    if not isinstance(ax, Axes):
        raise ScResidualError(f"ax must be a matplotlib Axes, not {type(ax).__name__}.")
    return ax.figure, ax


def _finish(
    fig: Figure,
    axes: Axes | list[Axes],
    *,
    show: bool | None,
    save: str | os.PathLike | None,
    return_fig: bool,
) -> Axes | list[Axes] | Figure | None:
    """Save and show as asked; return the figure, the axes, or None once shown (as scanpy)."""
    if save is not None:
        # A reader never sees half a figure; an existing folder at `save` is refused.
        with atomic_path(save, replace_dir=lambda _: False) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
    if show:
        plt.show()
    if return_fig:
        return fig
    return None if show else axes


def class_order(
    adata: AnnData,
    *,
    labels_key: str,
    pred_key: str | None = None,
    order: Sequence[str] | None = None,
) -> list[str]:
    """Classes in display order.

    ``order`` if given, else the categorical order of ``obs[labels_key]`` (e.g. anatomical,
    as in :func:`scresidual.datasets.lymph_node`), else sorted. Classes that occur in the
    labels or the predictions (``obs[pred_key]``, default ``'<labels_key>_pred'``) but are
    missing from that order are appended, sorted.
    """
    pred_key = pred_key or _constants.pred_key(labels_key)
    present = {str(v) for k in (labels_key, pred_key) for v in adata.obs[k].dropna().unique()}
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


def _two_axes(ax, figsize: tuple[float, float]) -> tuple[Figure, list[Axes], bool]:
    """The figure and the (true, predicted) panels; whether the figure is new."""
    if ax is None:
        fig, axes = plt.subplots(
            1, 2, figsize=figsize, sharex=True, sharey=True, layout="constrained"
        )
        return fig, list(axes), True
    axes = list(np.ravel(np.asarray(ax, dtype=object))) if not isinstance(ax, Axes) else [ax]
    if len(axes) != 2 or not all(isinstance(a, Axes) for a in axes):
        raise ScResidualError(
            "regions draws two panels (true, predicted): pass ax as a pair of Axes, e.g. "
            "plt.subplots(1, 2)[1]."
        )
    return axes[0].figure, axes, False


@doc_params(
    doc_spatial_key=doc_spatial_key,
    doc_library_key_slide=doc_library_key_slide,
    doc_point_size=doc_point_size,
    doc_units=doc_units,
    doc_show=doc_show,
    doc_save=doc_save,
    doc_return_fig=doc_return_fig,
)
def regions(
    adata: AnnData,
    *,
    labels_key: str,
    pred_key: str | None = None,
    train_key: str | None = None,
    highlight: str | None = None,
    spatial_key: str = SPATIAL_KEY,
    library_key: str | None = None,
    slide: str | None = None,
    order: Sequence[str] | None = None,
    point_size: float | None = None,
    units: str = "units",
    title: str | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> list[Axes] | Figure | None:
    """True and predicted regions side by side on the slide.

    Spots without a true label are grey (legend: ``'unlabelled'``, if there are any); spots
    whose labels were trained on are outlined (legend: ``'training spot'``). A new figure's
    width follows the slide's aspect ratio; dots are sized in coordinate units, so they tile
    the tissue at any figure size; a scale bar sits at the lower right.

    Parameters
    ----------
    adata
        Slide with ``obs[labels_key]`` and ``obs['<labels_key>_pred']``.
    labels_key
        True labels.
    pred_key
        Predictions (default ``'<labels_key>_pred'``).
    train_key
        Boolean ``obs`` column of training spots (default ``'<labels_key>_train'`` when
        present, as written by ``scresidual fit --output`` and the demo).
    highlight
        Boolean ``obs`` column of spots to mark with a red ring on both panels (legend:
        ``'suggested for labelling'``); default ``'<labels_key>_suggested'`` when present,
        as written by :func:`scresidual.tl.suggest_labels`.
    spatial_key
        {doc_spatial_key}
    library_key, slide
        {doc_library_key_slide}
    order
        Class order of the legend (default: see :func:`class_order`).
    point_size
        {doc_point_size}
    units
        {doc_units}
    title
        Figure title (default: the labels key, and the slide if one is chosen). With
        ``ax``, drawn only if given: the figure is the caller's.
    ax
        Two Axes to draw the true and the predicted regions on (default: a new figure);
        the legend goes to the right of the second.
    show
        {doc_show}
    save
        {doc_save}
    return_fig
        {doc_return_fig}

    Returns
    -------
    The two Axes (true, predicted), unless ``show`` or ``return_fig``.

    """
    pk = pred_key or _constants.pred_key(labels_key)
    check_obs_key(adata, labels_key)
    check_obs_key(adata, pk)
    tk = train_key or _constants.train_key(labels_key)
    if train_key is not None:
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
    cats = class_order(adata, labels_key=labels_key, pred_key=pk, order=order)
    colours = _palette(cats)
    size = point_size or DOT_FILL * spacing(xy[mask])
    fig, axes, new = _two_axes(ax, _figsize(xy[mask], 2))
    for a, values, name in zip(axes, (truth, pred), ("true", "predicted"), strict=True):
        dots(a, xy[mask], size, facecolors=[colours.get(v, _GREY) for v in values[mask]])
        if name == "true" and trained[mask].any():
            t = mask & trained
            dots(a, xy[t], size, facecolors="none", edgecolors="black", linewidths=0.6)
        if marked.any():
            dots(a, xy[marked], 2.2 * size, facecolors="none", edgecolors="red", linewidths=1.0)
        a.set_title(f"{name} regions")
        frame(a, xy[mask], size, units=units)
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours[c], label=c) for c in cats]
    if unlabelled[mask].any():
        handles.append(plt.Line2D([], [], ls="", marker="o", color=_GREY, label=UNLABELLED))
    if trained[mask].any():
        handles.append(
            plt.Line2D(
                [],
                [],
                ls="",
                marker="o",
                markerfacecolor="none",
                markeredgecolor="black",
                label="training spot",
            )
        )
    if marked.any():
        handles.append(
            plt.Line2D(
                [],
                [],
                ls="",
                marker="o",
                markerfacecolor="none",
                markeredgecolor="red",
                label="suggested for labelling",
            )
        )
    where = f", {library_key} {slide}" if library_key is not None and slide is not None else ""
    if new:
        fig.legend(handles=handles, loc="outside right center", frameon=False)
        fig.suptitle(title or f"{labels_key}: true and predicted regions{where}")
    else:
        axes[1].legend(
            handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False
        )
        if title:
            fig.suptitle(title)
    return _finish(fig, axes, show=show, save=save, return_fig=return_fig)


@doc_params(doc_show=doc_show, doc_save=doc_save, doc_return_fig=doc_return_fig)
def confusion(
    adata: AnnData,
    *,
    labels_key: str,
    pred_key: str | None = None,
    normalize: bool = True,
    order: Sequence[str] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Confusion matrix of true (rows) vs predicted (columns) regions.

    Parameters
    ----------
    adata
        Slide with ``obs[labels_key]`` and ``obs['<labels_key>_pred']``.
    labels_key
        True labels; cells without one are left out.
    pred_key
        Predictions (default ``'<labels_key>_pred'``).
    normalize
        Divide each row by its total (the fraction of a true region predicted as each
        region: recall on the diagonal), as the title says; else spot counts.
    order
        Class order (default: see :func:`class_order`).
    ax
        Axes to draw on (default: a new figure); a colour bar is added beside it.
    show
        {doc_show}
    save
        {doc_save}
    return_fig
        {doc_return_fig}

    Returns
    -------
    The Axes of the matrix, unless ``show`` or ``return_fig``.

    """
    pk = pred_key or _constants.pred_key(labels_key)
    check_obs_key(adata, labels_key)
    check_obs_key(adata, pk)
    truth = adata.obs[labels_key]
    keep = truth.notna().to_numpy()
    table = pd.crosstab(
        truth[keep].astype(str).to_numpy(), adata.obs[pk][keep].astype(str).to_numpy()
    )
    cats = class_order(adata, labels_key=labels_key, pred_key=pk, order=order)
    table = table.reindex(index=cats, columns=cats, fill_value=0)
    values = table.to_numpy(float)
    if normalize:
        values = values / np.maximum(values.sum(1, keepdims=True), 1)
    fig, ax = _figure(ax, (6.5, 5.5))
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
            ax.text(
                j,
                i,
                f"{v:.2f}" if normalize else int(v),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > 0.6 * values.max() else "black",
            )
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("fraction of the true region" if normalize else "spots")
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig)


@doc_params(doc_show=doc_show, doc_save=doc_save, doc_return_fig=doc_return_fig)
def arms(
    results: pd.DataFrame,
    *,
    metric: str = "macro_f1",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Bar chart of a metric per arm and evaluation set (:func:`scresidual.tl.compare_arms`).

    Bars are labelled with their values; with several rows per arm and evaluation set (e.g.
    one per seed) a bar is their mean and its error bar their standard deviation.

    Parameters
    ----------
    results
        Table with columns ``arm``, ``evaluated_on`` and ``metric``, as returned by
        :func:`scresidual.tl.compare_arms`.
    metric
        Column to plot, e.g. ``"macro_f1"`` or ``"accuracy"``.
    ax
        Axes to draw on (default: a new figure).
    show
        {doc_show}
    save
        {doc_save}
    return_fig
        {doc_return_fig}

    Returns
    -------
    The Axes of the chart, unless ``show`` or ``return_fig``.

    """
    for col in ("arm", "evaluated_on", metric):
        if col not in results:
            raise ScResidualError(f"results have no column {col!r}; pass compare_arms() output.")
    grouped = results.groupby(["evaluated_on", "arm"], sort=False)[metric]
    table = grouped.mean().unstack("arm")
    spread = grouped.std().unstack("arm") if grouped.size().max() > 1 else None
    fig, ax = _figure(ax, (7, 4))
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
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig)
