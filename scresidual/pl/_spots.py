"""Spots on a slide: dots sized in coordinate units, a tight frame and a scale bar."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import EllipseCollection
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
from scipy.spatial import cKDTree

DOT_FILL = 0.9
"""Dot diameter as a fraction of the median distance between neighbouring spots."""

doc_point_size = (
    "Dot diameter in coordinate units (default: 0.9 times the median distance between "
    "neighbouring spots, so that the dots tile the tissue)."
)
doc_units = "Unit of the coordinates, written on the scale bar (e.g. ``'µm'``)."


def spacing(xy: np.ndarray) -> float:
    """Median distance from a spot to its nearest neighbour (1 for fewer than 2 spots)."""
    xy = np.unique(np.asarray(xy, dtype=float)[:, :2], axis=0)
    if len(xy) < 2:
        return 1.0
    d = cKDTree(xy).query(xy, k=2)[0][:, 1]
    return float(np.median(d)) or 1.0


def dots(ax: Axes, xy: np.ndarray, diameter: float, **kwargs) -> EllipseCollection:
    """Draw one dot per row of ``xy``, ``diameter`` in coordinate units (zooms with the map).

    Unlike ``scatter`` sizes (in points), the dots tile the tissue at any figure size.
    ``kwargs`` go to :class:`~matplotlib.collections.EllipseCollection` (``facecolors``,
    ``array`` + ``cmap``, ``edgecolors``, …).
    """
    n = len(xy)
    size = np.full(n, diameter)
    dots = EllipseCollection(
        size,
        size,
        np.zeros(n),
        units="xy",
        offsets=np.asarray(xy, dtype=float)[:, :2],
        offset_transform=ax.transData,
        **kwargs,
    )
    ax.add_collection(dots, autolim=False)
    return dots


def _nice(length: float) -> float:
    """The largest of 1, 2, 5 × 10^k not above ``length``."""
    power = 10 ** np.floor(np.log10(length))
    return float(max(m for m in (1, 2, 5) if m * power <= length) * power)


def frame(ax: Axes, xy: np.ndarray, diameter: float, *, units: str) -> None:
    """Limits hugging the spots, equal aspect, y down (image convention), a scale bar."""
    xy = np.asarray(xy, dtype=float)[:, :2]
    lo, hi = (xy.min(0), xy.max(0)) if len(xy) else (np.zeros(2), np.ones(2))
    pad = diameter
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    if not ax.yaxis_inverted():  # shared y axes invert together: once is enough
        ax.set_ylim(hi[1] + pad, lo[1] - pad)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    length = _nice(max(hi[0] - lo[0], diameter) / 5)
    label = f"{length:g} {units}".strip()
    ax.add_artist(
        AnchoredSizeBar(
            ax.transData, length, label, "lower right", frameon=False, size_vertical=0, sep=3
        )
    )
