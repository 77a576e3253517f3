"""Maps for the annotation loop: per-cell uncertainty and the cells suggested for labelling."""

from __future__ import annotations

import os

from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

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
from ._plots import _figsize, _figure, _finish, _slide_mask
from ._spots import DOT_FILL, doc_point_size, doc_units, dots, frame, spacing


@doc_params(
    doc_spatial_key=doc_spatial_key,
    doc_library_key_slide=doc_library_key_slide,
    doc_point_size=doc_point_size,
    doc_units=doc_units,
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
    units: str = "units",
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
        {doc_point_size}
    units
        {doc_units}
    ax
        Axes to draw on (default: a new figure); a colour bar as tall as the map is added
        beside it.
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
    size = point_size or DOT_FILL * spacing(xy[mask])
    fig, ax = _figure(ax, _figsize(xy[mask], 1))
    values = adata.obs[uk].to_numpy(float)[mask]
    im = dots(
        ax,
        xy[mask],
        size,
        array=values,
        cmap="magma_r",
        norm=Normalize(0, max(float(values.max(initial=0)), 1e-6)),
    )
    sk = suggested_key(key)
    if sk in adata.obs:
        picked = mask & adata.obs[sk].to_numpy(bool)
        dots(ax, xy[picked], 2 * size, facecolors="none", edgecolors="black", linewidths=0.8)
        if picked.any():
            ring = Line2D([], [], ls="", marker="o", mfc="none", mec="black")
            ax.legend([ring], ["suggested for labelling"], loc="upper right", fontsize=8)
    ax.set_title(f"{key}: uncertainty (1 - max probability)")
    frame(ax, xy[mask], size, units=units)
    # A colour bar in axes coordinates: exactly as tall as the map, whatever its aspect.
    cax = ax.inset_axes([1.03, 0.0, 0.04, 1.0])
    fig.colorbar(im, cax=cax, label="uncertainty")
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig)
