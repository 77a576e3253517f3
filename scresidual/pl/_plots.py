"""Plots of region maps, confusion matrices and arm comparisons (matplotlib, scanpy-like)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._constants import SPATIAL_KEY, pred_key
from .._validate import check_obs_key, check_spatial


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


def regions(
    adata: AnnData,
    *,
    labels_key: str,
    pred_key_: str | None = None,
    spatial_key: str = SPATIAL_KEY,
    library_key: str | None = None,
    slide: str | None = None,
    point_size: float | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Figure | None:
    """True and predicted regions side by side on the slide.

    Parameters
    ----------
    adata
        Slide with ``obs[labels_key]`` and ``obs['<labels_key>_pred']``.
    labels_key
        True labels.
    pred_key_
        Predictions (default ``'<labels_key>_pred'``).
    spatial_key
        Coordinates.
    library_key, slide
        Show only cells of ``slide`` in ``obs[library_key]``.
    point_size
        Marker size (default from the number of cells).
    show, save
        Show the figure / save it to a file; returns the figure unless shown.

    """
    pk = pred_key_ or pred_key(labels_key)
    check_obs_key(adata, labels_key)
    check_obs_key(adata, pk)
    xy = check_spatial(adata, spatial_key)
    mask = np.ones(adata.n_obs, bool)
    if library_key is not None and slide is not None:
        check_obs_key(adata, library_key)
        mask = (adata.obs[library_key].astype(str) == str(slide)).to_numpy()
    truth = adata.obs[labels_key].astype(str).to_numpy()
    pred = adata.obs[pk].astype(str).to_numpy()
    cats = sorted(set(truth[truth != "nan"]) | set(pred))
    colours = _palette(cats)
    size = point_size or max(2.0, 8000 / max(mask.sum(), 1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    for ax, values, title in zip(axes, (truth, pred), ("true", "predicted"), strict=True):
        c = [colours.get(v, (0.85, 0.85, 0.85, 1)) for v in values[mask]]
        ax.scatter(xy[mask, 0], xy[mask, 1], c=c, s=size, linewidths=0)
        ax.set_title(f"{title} regions")
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours[c], label=c) for c in cats]
    fig.legend(handles=handles, loc="center right", frameon=False)
    fig.subplots_adjust(right=0.8)
    return _finish(fig, save, show)


def confusion(
    adata: AnnData,
    *,
    labels_key: str,
    pred_key_: str | None = None,
    normalize: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Figure | None:
    """Confusion matrix of true (rows) vs predicted (columns) regions."""
    pk = pred_key_ or pred_key(labels_key)
    check_obs_key(adata, labels_key)
    check_obs_key(adata, pk)
    truth = adata.obs[labels_key]
    keep = truth.notna().to_numpy()
    table = pd.crosstab(
        truth[keep].astype(str).to_numpy(), adata.obs[pk][keep].astype(str).to_numpy()
    )
    cats = sorted(set(table.index) | set(table.columns))
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
    for i in range(len(cats)):
        for j in range(len(cats)):
            v = values[i, j]
            ax.text(j, i, f"{v:.2f}" if normalize else int(v), ha="center", va="center",
                    fontsize=7, color="white" if v > 0.6 * values.max() else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
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
    """Bar chart of a metric per arm and evaluation set (:func:`scresidual.tl.compare_arms`)."""
    from .._errors import ScResidualError

    for col in ("arm", "evaluated_on", metric):
        if col not in results:
            raise ScResidualError(f"results have no column {col!r}; pass compare_arms() output.")
    table = results.pivot_table(index="evaluated_on", columns="arm", values=metric, sort=False)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    table.plot.bar(ax=ax, rot=0, width=0.8)
    ax.set_ylabel(metric.replace("_", "-"))
    ax.set_ylim(0, 1)
    ax.legend(title="arm", frameon=False, ncols=2)
    ax.set_xlabel("")
    fig.tight_layout()
    return _finish(fig, save, show)
