"""The annotation widget: a jupyter-scatter plot of the slide and ipywidgets controls.

It draws an :class:`~._annotator.Annotator` and forwards the user's lasso, clicks and buttons
to it; all state lives in the Annotator. jupyter-scatter draws the cells with WebGL (millions
of points) and does the lasso and click selection in the browser.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
from matplotlib.colors import to_hex

from .._errors import ScResidualError
from ._plots import _GREY, UNLABELLED, _palette

INSTALL = "pip install 'scresidual[widget]'"

BUILT_IN = ("labels", "prediction", "uncertainty")
"""Colourings of the cells besides obs columns and genes."""

PREDICTED, LABELLED = "predicted", "labelled"
OPACITY = {PREDICTED: 0.45, LABELLED: 1.0}
"""Labelled cells are drawn opaque and larger, predicted ones faded."""

RING_SIDES = 16


def require_widgets():
    """Import jupyter-scatter and ipywidgets, or a one-line error naming the extra."""
    try:
        import ipywidgets
        import jscatter
    except ImportError as err:
        raise ScResidualError(
            f"the annotation widget needs jupyter-scatter and ipywidgets ({err.name} is "
            f"missing); {INSTALL}."
        ) from None
    return jscatter, ipywidgets


def _point_size(n: int) -> float:
    """Pixels per cell: large enough to see on a small slide, small enough for 10^6 cells."""
    return float(np.clip(1200 / np.sqrt(max(n, 1)), 1.0, 12.0))


class AnnotatorView:
    """The widget of an :class:`Annotator` (``view.widget`` is what Jupyter displays)."""

    def __init__(self, ann, *, color_by: str = "labels", height: int = 600):
        jscatter, w = require_widgets()
        self.ann = ann
        self.color_by = color_by
        xy = ann.xy
        lo, hi = xy.min(0), xy.max(0)
        half = max(0.55 * float((hi - lo).max()), 1e-9)  # 10% margin
        mid = (lo + hi) / 2
        # Equal x and y ranges keep the tissue's aspect ratio; y is flipped as in sr.pl
        # (image coordinates grow downwards).
        self.frame = pd.DataFrame(
            {
                "x": xy[:, 0],
                "y": -xy[:, 1],
                "colour": np.zeros(len(xy)),
                "state": pd.Categorical(
                    np.full(len(xy), PREDICTED), categories=[PREDICTED, LABELLED]
                ),
            }
        )
        self.size = _point_size(len(xy))
        self.scatter = jscatter.Scatter(
            x="x",
            y="y",
            data=self.frame,
            x_scale=(mid[0] - half, mid[0] + half),
            y_scale=(-mid[1] - half, -mid[1] + half),
            height=height,
            width=height,  # a square canvas over equal x/y ranges: the true aspect ratio
            axes=False,
            legend=True,
            lasso_initiator=False,
            mouse_mode="lasso",
            zoom_animation=500,
        )
        self.message = w.HTML()
        self.message.add_class("sr-message")
        self.plot = None
        self._recolour(color_by)  # before the widget exists: its points are sent once
        self.plot = self.scatter.widget
        self.plot.observe(self._on_lasso, names="selection")

        def button(text: str, tip: str, css: str, action):
            b = w.Button(description=text, tooltip=tip, layout=w.Layout(width="auto"))
            b.add_class(css)
            b.on_click(lambda _: action())
            return b

        options = list(BUILT_IN) + [
            str(c) for c in ann.adata.obs.columns if not str(c).startswith(ann.labels_key)
        ]
        self.colour = w.Dropdown(
            options=options, value=color_by if color_by in options else None, description="colour"
        )
        self.gene = w.Text(placeholder="or a gene", layout=w.Layout(width="140px"))
        self.gene.add_class("sr-gene")
        self.region = w.Combobox(
            placeholder="region (pick or type)", options=ann.regions, ensure_option=False
        )
        self.region.add_class("sr-region")
        self.progress = w.IntProgress(value=0, min=0, max=3, layout=w.Layout(width="120px"))
        self.suggested = w.Select(options=[], rows=14, layout=w.Layout(width="260px"))
        self.suggested.add_class("sr-suggestions")
        self.colour.observe(lambda c: self._recolour(c["new"]), names="value")
        self.gene.on_submit(lambda t: self._recolour(t.value.strip()))
        self.suggested.observe(self._on_suggestion, names="value")
        controls = w.HBox(
            [
                self.region,
                button("Assign", "label the selection with this region", "sr-assign", self._assign),
                button("Erase", "unlabel the selection", "sr-erase", ann.erase),
                button("Undo", "undo the last label change", "sr-undo", ann.undo),
                button("Redo", "redo", "sr-redo", ann.redo),
                button("Refit", "fit the model on the labels", "sr-refit", self._refit),
                self.progress,
            ]
        )
        side = w.VBox([w.HTML("<b>label these next</b>"), self.suggested])
        self.widget = w.VBox(
            [
                w.HBox([self.colour, self.gene]),
                w.HBox([self.scatter.show(), side]),
                controls,
                self.message,
            ]
        )
        self.widget.add_class("sr-annotator")
        self._syncing = False
        ann.on_change(self._on_change)
        self._show(ann.message)

    def _show(self, message: str) -> None:
        self.message.value = f"<span>{html.escape(message)}</span>"

    # --------------------------------------------------------------- browser → Python
    def _on_lasso(self, change) -> None:
        if self._syncing:
            return
        positions = np.asarray(change["new"] if change["new"] is not None else [], dtype=np.int64)
        self._syncing = True
        try:
            self.ann.select(positions)
        finally:
            self._syncing = False

    def _assign(self) -> None:
        self.ann.assign(self.region.value)

    def _refit(self) -> None:
        self.ann.refit(wait=False)

    def _on_suggestion(self, change) -> None:
        if change["new"] is None:
            return
        cell = self.ann.adata.obs_names.get_loc(change["new"])
        d = ((self.ann.xy - self.ann.xy[cell]) ** 2).sum(1)
        near = np.argpartition(d, min(50, len(d) - 1))[:50]
        self.scatter.zoom(to=near, animation=500, padding=0.5)
        self.ann.select([cell])

    # --------------------------------------------------------------- Python → browser
    def _on_change(self, what: str) -> None:
        if what == "message":
            self._show(self.ann.message)
        elif what == "progress":
            self.progress.value = self.ann.progress[0]
        elif what == "selection" and not self._syncing:
            self._syncing = True
            try:
                self.scatter.selection(self.ann.selection)
            finally:
                self._syncing = False
        elif what in ("labels", "refit"):
            self.region.options = self.ann.regions
            if what == "refit":
                self.progress.value = self.ann.progress[0]
                self._show_suggestions()
            self._recolour(self.color_by)

    def _show_suggestions(self) -> None:
        ann = self.ann
        self.suggested.options = [(f"{i + 1}. {c}", c) for i, c in enumerate(ann.suggestions)]
        self.suggested.value = None
        cells = ann.adata.obs_names.get_indexer(ann.suggestions)
        radius = 0.015 * float(np.ptp(ann.xy, axis=0).max())
        angles = np.linspace(0, 2 * np.pi, RING_SIDES + 1)
        ring = radius * np.c_[np.cos(angles), np.sin(angles)]
        self.scatter.annotations(
            [_jscatter_line([(x + dx, -y + dy) for dx, dy in ring]) for x, y in ann.xy[cells]]
        )

    def _recolour(self, what: str) -> None:
        """Colour the cells by ``what`` (labels, prediction, uncertainty, obs column, gene)."""
        ann = self.ann
        try:
            values, colours = self._colouring(what)
        except ScResidualError as err:
            self._show(str(err))
            return
        if what in (BUILT_IN + tuple(ann.adata.obs.columns)):
            self.color_by = what
        labelled = ~pd.isna(ann.labels.to_numpy())
        self.frame["colour"] = values
        self.frame["state"] = pd.Categorical(
            np.where(labelled, LABELLED, PREDICTED), categories=[PREDICTED, LABELLED]
        )
        if isinstance(colours, dict):
            self.scatter.color(by="colour", map=colours, norm=None)
        else:
            finite = values[np.isfinite(values)]
            lims = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
            self.scatter.color(by="colour", map=colours, norm=lims)
        self.scatter.opacity(by="state", map=OPACITY)
        self.scatter.size(by="state", map={PREDICTED: self.size, LABELLED: 1.6 * self.size})
        if self.plot is None:
            return
        # jupyter-scatter sends the points only when an encoding is first set up.
        self.plot.prevent_filter_reset = True
        self.plot.non_spatial_points_update = True
        self.plot.points = self.scatter.get_point_list()

    def _colouring(self, what: str):
        """Per-cell values and their colours: a dict for categories, a colormap name else."""
        ann = self.ann
        if what in ("labels", "prediction"):
            labels = ann.labels
            if what == "prediction" and ann.predictions is not None:
                labels = labels.fillna(ann.predictions)
            elif what == "prediction":
                raise ScResidualError("no predictions yet: label two regions, then press Refit")
            return self._categories(labels.fillna(UNLABELLED), ann.regions)
        if what == "uncertainty":
            if ann.uncertainty is None:
                raise ScResidualError("no uncertainty yet: label two regions, then press Refit")
            return ann.uncertainty.to_numpy(float), "magma_r"
        obs = ann.adata.obs
        if what in obs:
            column = obs[what]
            if pd.api.types.is_numeric_dtype(column) and not isinstance(
                column.dtype, pd.CategoricalDtype
            ):
                return column.to_numpy(float), "viridis"
            order = list(column.cat.categories) if hasattr(column, "cat") else []
            return self._categories(column.astype(object).fillna(UNLABELLED).astype(str), order)
        if what in ann.adata.var_names:
            x = ann.adata[:, what].X
            x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
            return x.ravel().astype(float), "viridis"
        raise ScResidualError(f"{what!r} is neither an obs column nor a gene of this slide")

    @staticmethod
    def _categories(values: pd.Series, order) -> tuple[np.ndarray, dict]:
        order = [str(c) for c in order]
        names = order + sorted(set(values.unique()) - {UNLABELLED} - set(order))
        colours = {c: to_hex(v, keep_alpha=True) for c, v in _palette(names).items()}
        colours[UNLABELLED] = to_hex(_GREY, keep_alpha=True)
        categories = pd.Categorical(values.to_numpy(dtype=object), categories=list(colours))
        return pd.Series(categories).to_numpy(), colours


def _jscatter_line(vertices):
    from jscatter import Line

    return Line(vertices, line_color="black", line_width=2)
