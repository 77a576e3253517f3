"""Maps for the annotation loop: per-cell uncertainty and the cells suggested for labelling."""

from __future__ import annotations

import os

from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._constants import SPATIAL_KEY, suggested_key, uncertainty_key
from .._docs import (
    doc_library_key_slide,
    doc_params,
    doc_return_fig,
    doc_save,
    doc_show,
    doc_spatial_key,
)
from .._validate import check_obs_key, check_spatial
from ._plots import _figure, _finish, _slide_mask


@doc_params(
    doc_spatial_key=doc_spatial_key,
    doc_library_key_slide=doc_library_key_slide,
    doc_show=doc_show,
    doc_save=doc_save,
    doc_return_fig=doc_return_fig,
)
def uncertainty(
    adata: AnnData,
    *,
    key: str,
    spatial_key: str = SPATIAL_KEY,
    library_key: str | None = None,
    slide: str | None = None,
    point_size: float | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Map of ``obs['<key>_uncertainty']`` (written by ``predict``) on the slide.

    Cells suggested for labelling (``obs['<key>_suggested']``, written by
    :func:`scresidual.tl.suggest_labels`) are outlined in black.

    Parameters
    ----------
    adata
        Slide with predictions.
    key
        The predictions' key (the training ``labels_key`` unless ``key_added`` was given).
    spatial_key
        {doc_spatial_key}
    library_key, slide
        {doc_library_key_slide}
    point_size
        Marker size (default from the number of cells).
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
    The Axes of the map, unless ``show`` or ``return_fig``.

    """
    uk = uncertainty_key(key)
    check_obs_key(adata, uk)
    xy = check_spatial(adata, spatial_key)
    mask = _slide_mask(adata, library_key, slide)
    size = point_size or max(2.0, 8000 / max(mask.sum(), 1))
    fig, ax = _figure(ax, (6.5, 5.5))
    values = adata.obs[uk].to_numpy(float)[mask]
    im = ax.scatter(
        xy[mask, 0],
        xy[mask, 1],
        c=values,
        s=size,
        cmap="magma_r",
        vmin=0,
        vmax=max(float(values.max(initial=0)), 1e-6),
        linewidths=0,
    )
    sk = suggested_key(key)
    if sk in adata.obs:
        picked = mask & adata.obs[sk].to_numpy(bool)
        ax.scatter(
            xy[picked, 0],
            xy[picked, 1],
            s=4 * size,
            facecolors="none",
            edgecolors="black",
            linewidths=0.8,
            label="suggested for labelling",
        )
        if picked.any():
            ax.legend(loc="upper right", frameon=False, fontsize=8)
    ax.set_title(f"{key}: uncertainty (1 - max probability)")
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, label="uncertainty")
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig)
