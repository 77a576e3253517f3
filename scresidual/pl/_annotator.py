"""The annotation loop's state: selection, labels, undo/redo, autosave and refits.

:class:`Annotator` holds what the widget shows and does; the widget (:mod:`._annotator_view`)
only draws it and forwards clicks, so everything here runs (and is tested) without a browser.
Each label change is written to ``obs[labels_key]`` and to the autosave file at once; a refit
runs in a background thread on a snapshot of the labels, so labelling goes on meanwhile.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import (
    SPATIAL_KEY,
    pred_key,
    set_key,
    suggested_key,
    uncertainty_key,
)
from .._errors import ScResidualError, first_line
from .._labels_file import read_labels_csv, write_labels_csv
from .._validate import check_obs_key, check_spatial, check_unique_obs_names, labelled_mask
from ..model import SpatialRegionClassifier
from ..model.sdata import add_predictions
from ..read.sdata import is_spatialdata, table_anndata
from ..tl import fit_regions, suggest_labels


def _candidates(adata: AnnData, candidates) -> np.ndarray | None:
    """``candidates=`` as a boolean mask of ``adata``'s cells (None: every cell)."""
    if candidates is None:
        return None
    if isinstance(candidates, str):
        check_obs_key(adata, candidates)
        candidates = adata.obs[candidates].to_numpy()
    mask = np.asarray(candidates)
    if mask.dtype != bool or mask.shape != (adata.n_obs,):
        raise ScResidualError(
            f"candidates= must be a boolean mask of the {adata.n_obs} cells or the name of a "
            f"boolean obs column, got {mask.dtype} of shape {mask.shape}."
        )
    if not mask.any():
        raise ScResidualError("candidates= excludes every cell; mark the cells to suggest from.")
    return mask


def _as_table(adata, table_key: str | None, spatial_key: str) -> tuple[AnnData, AnnData | None]:
    """The AnnData to annotate (with coordinates) and, for a SpatialData, its table."""
    if is_spatialdata(adata):
        name, work = table_anndata(adata, table_key=table_key, spatial_key=spatial_key)
        return work, adata.tables[name]
    if not isinstance(adata, AnnData):
        raise ScResidualError(
            f"annotate needs an AnnData or a SpatialData, not {type(adata).__name__}."
        )
    if table_key is not None:
        raise ScResidualError("table_key= names a table of a SpatialData; drop it for an AnnData.")
    return adata, None


def _labels_from_file(adata: AnnData, path, labels_key: str) -> pd.Series:
    """The labels of an autosave of ``adata`` (every cell; NaN where unlabelled)."""
    saved = read_labels_csv(path)
    unknown = saved.index.difference(adata.obs_names)
    if len(unknown):
        raise ScResidualError(
            f"{path} is not an autosave of this slide: {len(unknown)} of its {len(saved)} cell "
            f"ids (e.g. {unknown[0]!r}) are not in adata.obs_names; pass the file this slide's "
            "annotation wrote."
        )
    return saved.reindex(adata.obs_names).rename(labels_key)


def _categorical(labels: pd.Series, order: Sequence[str]) -> pd.Categorical:
    present = set(labels.dropna())
    categories = [c for c in order if c in present] + sorted(present - set(order))
    return pd.Categorical(labels.to_numpy(dtype=object), categories=categories)


def restore_annotation(
    adata,
    path: str | os.PathLike,
    *,
    labels_key: str,
    table_key: str | None = None,
    spatial_key: str = SPATIAL_KEY,
) -> pd.Series:
    """Restore ``obs[labels_key]`` from an autosave written by :func:`annotate`.

    The file is a full snapshot: cells it does not list become unlabelled. ``adata`` may be a
    :class:`spatialdata.SpatialData` (its table ``table_key`` is restored). The file is only
    read.

    Returns
    -------
    The restored labels (a Series over ``obs_names``, NaN where unlabelled).

    """
    work, table = _as_table(adata, table_key, spatial_key)
    labels = _labels_from_file(work, Path(path), labels_key)
    target = work if table is None else table
    order = (
        target.obs[labels_key].cat.categories
        if labels_key in target.obs
        and isinstance(target.obs[labels_key].dtype, pd.CategoricalDtype)
        else ()
    )
    target.obs[labels_key] = _categorical(labels, [str(c) for c in order])
    return labels


class Annotator:
    """Label a slide interactively and refit the region classifier on the labels.

    Create it with :func:`annotate`; in Jupyter it displays as a widget (jupyter-scatter plot
    and controls). Every method the widget's buttons call is public, so the loop can also be
    driven from code.

    Attributes
    ----------
    adata
        The annotated AnnData (for a SpatialData input, its table with coordinates).
    selection
        Positions (row numbers) of the selected cells.
    predictions, uncertainty, prediction_sets
        After a refit: Series over ``obs_names`` (the predicted region, 1 - the highest
        calibrated probability, the conformal set or None when the model has no sets).
    suggestions
        After a refit: obs names of the cells to label next, in order.
    candidates
        Boolean mask of the cells that may be suggested (None: every unlabelled cell); set it
        to a mask or a boolean obs column's name to change where the next refit suggests.
    model
        The last fitted :class:`~scresidual.model.SpatialRegionClassifier`.
    message
        The last one-line message to the user.

    """

    def __init__(
        self,
        adata,
        labels_key: str,
        *,
        autosave: str | os.PathLike | None = None,
        sources: Sequence[str] | None = None,
        features: Sequence[str] = ("pca",),
        library_key: str | None = None,
        spatial_key: str = SPATIAL_KEY,
        table_key: str | None = None,
        seed: int = 0,
        auto_refit: int | None = None,
        n_suggestions: int = 20,
        candidates=None,
        fit_kwargs: dict | None = None,
    ):
        if not isinstance(labels_key, str) or not labels_key:
            raise ScResidualError(f"labels_key must be an obs column name, not {labels_key!r}.")
        self.sdata = adata if is_spatialdata(adata) else None
        self.adata, self._table = _as_table(adata, table_key, spatial_key)
        self.xy = check_spatial(self.adata, spatial_key)[:, :2]
        check_unique_obs_names(self.adata)  # the autosave maps labels back by cell name
        if library_key is not None:
            check_obs_key(self.adata, library_key)
        if auto_refit is not None and (
            isinstance(auto_refit, bool)
            or not isinstance(auto_refit, (int, np.integer))
            or auto_refit < 1
        ):
            raise ScResidualError(f"auto_refit={auto_refit!r} must be a number of labels, >= 1.")
        self.labels_key = labels_key
        self.autosave = None if autosave is None else Path(autosave)
        self.fit_options = {
            "sources": list(sources or ()),
            "features": list(features),
            "library_key": library_key,
            "spatial_key": spatial_key,
            "seed": seed,
            "progress": False,
            **(fit_kwargs or {}),
        }
        self.seed = seed
        self.auto_refit = auto_refit
        self.n_suggestions = n_suggestions
        self.candidates = candidates
        self.selection = np.zeros(0, dtype=np.int64)
        self.model = None
        self.predictions = self.uncertainty = self.prediction_sets = None
        self.suggestions: list[str] = []
        self.suggestion_table: pd.DataFrame | None = None
        self.message = ""
        self._undo: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._redo: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._since_refit = 0
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._listeners: list = []
        self.progress = (0, 3)
        self.view = None
        self._error: BaseException | None = None
        self._fit_data: AnnData | None = None
        self._inputs: dict = {}  # the model's inputs, kept from one refit to the next
        obs = self.adata.obs
        existing = obs[labels_key] if labels_key in obs else None
        self._order = (
            [str(c) for c in existing.cat.categories]
            if existing is not None and isinstance(existing.dtype, pd.CategoricalDtype)
            else []
        )
        if self.autosave is not None and self.autosave.exists():
            labels = _labels_from_file(self.adata, self.autosave, labels_key)
            self.message = f"restored {int(labels.notna().sum())} labels from {self.autosave}"
        elif existing is not None:
            values = existing.astype(object).to_numpy()
            kept = labelled_mask(values)
            labels = pd.Series(np.nan, index=obs.index, dtype=object)
            labels[kept] = [str(v) for v in values[kept]]
        else:
            labels = pd.Series(np.nan, index=obs.index, dtype=object)
        self._labels = labels.to_numpy(dtype=object)
        self._write()

    # ------------------------------------------------------------------ state
    @property
    def candidates(self) -> np.ndarray | None:
        return self._candidates

    @candidates.setter
    def candidates(self, value) -> None:
        self._candidates = _candidates(self.adata, value)

    @property
    def labels(self) -> pd.Series:
        """The current labels (a Series over ``obs_names``; NaN where unlabelled)."""
        return pd.Series(self._labels, index=self.adata.obs_names, name=self.labels_key)

    @property
    def regions(self) -> list[str]:
        """Region names in display order (as :func:`scresidual.pl.regions` orders them)."""
        present = {str(v) for v in pd.unique(self._labels) if not pd.isna(v)}
        if self.predictions is not None:
            present |= {str(v) for v in self.predictions.dropna().unique()}
        return [c for c in self._order if c in present] + sorted(present - set(self._order))

    @property
    def refitting(self) -> bool:
        """Whether a refit runs now."""
        return self._thread is not None and self._thread.is_alive()

    def on_change(self, callback) -> None:
        """Call ``callback(what)`` after each change: how the widget redraws.

        ``what`` is ``'labels'``, ``'selection'``, ``'refit'``, ``'progress'`` or ``'message'``.
        """
        self._listeners.append(callback)

    def _notify(self, what: str) -> None:
        for callback in self._listeners:
            callback(what)

    def _say(self, message: str) -> None:
        self.message = message
        self._notify("message")

    def _positions(self, cells) -> np.ndarray:
        """Row positions of ``cells``: a boolean mask, integer positions or obs names."""
        n = self.adata.n_obs
        if cells is None:
            return np.zeros(0, dtype=np.int64)
        if isinstance(cells, (str, int, np.integer)):
            cells = [cells]
        values = np.asarray(cells)
        if values.dtype == bool:
            if values.shape != (n,):
                raise ScResidualError(
                    f"a boolean selection needs one value per cell ({n}), got {values.shape}."
                )
            return np.flatnonzero(values)
        if values.size == 0:
            return np.zeros(0, dtype=np.int64)
        if np.issubdtype(values.dtype, np.integer):
            if values.min() < 0 or values.max() >= n:
                raise ScResidualError(f"cell positions must lie in 0 … {n - 1}.")
            return np.unique(values.astype(np.int64))
        positions = self.adata.obs_names.get_indexer(values.astype(str))
        if (positions < 0).any():
            missing = values[positions < 0][0]
            raise ScResidualError(f"cell {missing!r} is not in adata.obs_names.")
        return np.unique(positions)

    def select(self, cells) -> None:
        """Set the selection: a boolean mask, integer positions or obs names (None: clear)."""
        self.selection = self._positions(cells)
        self._notify("selection")

    # ------------------------------------------------------------------ labels
    def _write(self) -> None:
        """Write the labels into ``obs[labels_key]`` (and the SpatialData table) and autosave."""
        values = _categorical(self.labels, self._order)
        self.adata.obs[self.labels_key] = values
        if self._table is not None:
            self._table.obs[self.labels_key] = values
        if self.autosave is not None:
            write_labels_csv(self.labels, self.autosave)

    def _change(self, positions: np.ndarray, new) -> None:
        with self._lock:
            old = self._labels[positions].copy()
            new = np.full(len(positions), new, dtype=object)
            self._labels[positions] = new
            self._undo.append((positions, old, new))
            self._redo.clear()
            self._write()
        self._notify("labels")

    def assign(self, region: str) -> None:
        """Label the selected cells ``region`` (an existing region or a new one)."""
        region = str(region).strip() if region is not None else ""
        if not region or region.lower() in ("nan", "none"):
            return self._say("type a region name (or pick one) to assign")
        if not len(self.selection):
            return self._say("nothing selected: draw a lasso or click cells first")
        if region not in self._order:
            self._order.append(region)
        self._change(self.selection, region)
        n = len(self.selection)
        self._since_refit += n
        self._say(f"{n} cells labelled {region!r} ({self.n_labelled} labelled)")
        if self.auto_refit and self._since_refit >= self.auto_refit and not self.refitting:
            self.refit(wait=False)

    def erase(self) -> None:
        """Unlabel the selected cells."""
        if not len(self.selection):
            return self._say("nothing selected: draw a lasso or click cells first")
        self._change(self.selection, np.nan)
        self._say(f"{len(self.selection)} cells unlabelled ({self.n_labelled} labelled)")

    def _replay(self, source: list, target: list, which: int, verb: str) -> None:
        if not source:
            return self._say(f"nothing to {verb}")
        with self._lock:
            change = source.pop()
            positions = change[0]
            self._labels[positions] = change[which]
            target.append(change)
            self._write()
        self._notify("labels")
        self._say(f"{verb}: {len(positions)} cells ({self.n_labelled} labelled)")

    def undo(self) -> None:
        """Undo the last label change."""
        self._replay(self._undo, self._redo, 1, "undo")

    def redo(self) -> None:
        """Redo the last undone label change."""
        self._replay(self._redo, self._undo, 2, "redo")

    @property
    def n_labelled(self) -> int:
        return int((~pd.isna(self._labels)).sum())

    # ------------------------------------------------------------------ refit
    def _problem(self) -> str | None:
        """Why the labels cannot be fitted yet, in one line (None: they can)."""
        counts = self.labels.value_counts()
        if len(counts) == 0:
            return "no cells labelled: label cells of at least two regions, then refit"
        if len(counts) == 1:
            return f"only one region labelled ({counts.index[0]!r}): label at least two"
        return None

    def refit(self, *, wait: bool = True) -> None:
        """Fit the default region classifier on the labels; update predictions and suggestions.

        Also the uncertainty and prediction sets. With ``wait=False`` the fit runs in a
        background thread (the widget stays responsive); :meth:`wait` joins it. A problem
        with the labels is a one-line :attr:`message`.
        """
        if self.refitting:
            return self._say("a refit is already running")
        problem = self._problem()
        if problem:
            return self._say(problem)
        self._since_refit = 0
        self._thread = threading.Thread(target=self._fit, name="scresidual-refit", daemon=True)
        self._thread.start()
        if wait:
            self.wait()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a running refit to finish (re-raising an unexpected error of it)."""
        if self._thread is not None:
            self._thread.join(timeout)
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _repr_mimebundle_(self, **kwargs):
        return None if self.view is None else self.view.widget._repr_mimebundle_(**kwargs)

    def _step(self, done: int, message: str) -> None:
        self.progress = (done, 3)
        self._notify("progress")
        self._say(message)

    def _shadow(self) -> AnnData:
        """The AnnData refits run on, made at the first refit.

        It shares X, layers and obsm with :attr:`adata` but has its own obs, so the user's is
        not touched while fitting, and it stays the same object, so that its inputs are
        computed once.
        """
        if self._fit_data is None:
            src = self.adata
            obs = pd.DataFrame(index=src.obs_names)
            library = self.fit_options["library_key"]
            if library is not None:
                obs[library] = src.obs[library].to_numpy()
            self._fit_data = AnnData(
                X=src.X, obs=obs, var=src.var, obsm=dict(src.obsm), layers=dict(src.layers)
            )
        return self._fit_data

    def _fit(self) -> None:
        key = self.labels_key
        with self._lock:
            labels = self.labels
            n_labelled = self.n_labelled
        shadow = self._shadow()
        shadow.obs[key] = labels.to_numpy(dtype=object)
        try:
            # The graph, features and ring means once per annotation, not 3x per refit.
            with SpatialRegionClassifier.reuse_views(self._inputs):
                self._step(0, f"refit: fitting on {n_labelled} labels …")
                model = fit_regions(shadow, labels_key=key, **self.fit_options)
                self._step(1, "refit: predicting …")
                model.predict(shadow)
                self._step(2, "refit: choosing the next cells to label …")
                free = pd.isna(labels).to_numpy()
                if self.candidates is not None:
                    free &= self.candidates
                n = min(self.n_suggestions, int(free.sum()))
                table = (
                    suggest_labels(shadow, model, n=n, seed=self.seed, candidates=self.candidates)
                    if n
                    else None
                )
        except Exception as err:  # noqa: BLE001 - shown in the widget; a bug re-raises in wait()
            self.progress = (0, 3)
            self._notify("progress")
            if not isinstance(err, ScResidualError):
                self._error = err
            return self._say(f"refit failed: {first_line(err)}")
        with self._lock:
            self.model = model
            pred = shadow.obs[pred_key(key)].astype(object)
            self.predictions = pred.rename(pred_key(key))
            self.uncertainty = shadow.obs[uncertainty_key(key)].rename(uncertainty_key(key))
            sets = shadow.obs.get(set_key(key))
            self.prediction_sets = None if sets is None else sets.rename(set_key(key))
            self.suggestion_table = table
            self.suggestions = [] if table is None else [str(c) for c in table.index]
            for target in (self.adata, self._table):
                if target is None:
                    continue
                add_predictions(shadow, target, key)
                target.obs[suggested_key(key)] = (
                    shadow.obs[suggested_key(key)].to_numpy()
                    if table is not None
                    else np.zeros(shadow.n_obs, dtype=bool)
                )
        self.progress = (3, 3)
        self._notify("refit")
        arm = getattr(model, "chosen_arm_", None)
        self._say(
            f"refit on {n_labelled} labels ({arm or 'fitted'}): predictions updated; "
            f"{len(self.suggestions)} cells suggested to label next"
            + (
                ""
                if self.prediction_sets is not None
                else "; no prediction sets yet (too few labels)"
            )
        )


def annotate(
    adata,
    labels_key: str,
    *,
    autosave: str | os.PathLike | None = None,
    sources: Sequence[str] | None = None,
    features: Sequence[str] = ("pca",),
    library_key: str | None = None,
    spatial_key: str = SPATIAL_KEY,
    table_key: str | None = None,
    seed: int = 0,
    auto_refit: int | None = None,
    n_suggestions: int = 20,
    candidates=None,
    fit_kwargs: dict | None = None,
    color_by: str = "labels",
    height: int = 600,
) -> Annotator:
    """Annotate a slide in Jupyter: paint regions, refit, label what the model suggests.

    Shows the slide (true aspect ratio) coloured by the labels, the predicted regions (labelled
    cells opaque and larger, predicted ones faded), the uncertainty, any obs column or a gene.
    Lasso or click to select cells; pick or type a region and press *Assign*; *Erase*, *Undo*,
    *Redo*. *Refit* fits the default :class:`~scresidual.model.SpatialRegionClassifier` on the
    labels in a background thread, then updates predictions, uncertainty, prediction sets and
    the suggested cells (ringed on the plot and listed: an entry zooms to the cell and selects
    it). Region colours are :func:`scresidual.pl.regions`'s.

    Each label change is written at once to ``obs[labels_key]`` (categorical; created when
    missing) and, with ``autosave``, to that CSV (cell id → label, written atomically). A
    refit writes ``obs['<labels_key>_pred']``, ``'_uncertainty'``, ``'_set'``,
    ``'_set_size'``, ``'_suggested'`` and ``obsm['<labels_key>_proba']``, as ``predict`` and
    :func:`scresidual.tl.suggest_labels` do.

    Parameters
    ----------
    adata
        The slide: an AnnData with coordinates in ``obsm[spatial_key]``, or a
        :class:`spatialdata.SpatialData` (labels and predictions go into its table
        ``table_key``).
    labels_key
        ``obs`` column of the labels (existing labels are kept).
    autosave
        CSV written after each change. If it exists, the annotation resumes from it (after a
        kernel crash, run the cell again); :func:`restore_annotation` reads it too.
    sources, features, library_key, spatial_key
        As for :meth:`~scresidual.model.SpatialRegionClassifier.setup_anndata`.
    table_key
        The table of a SpatialData (may be left out when it has one).
    seed
        Seed of the fits and the suggestions.
    auto_refit
        Refit by itself after this many newly labelled cells (default: only on *Refit*).
    n_suggestions
        Cells suggested after each refit.
    candidates
        The cells that may be suggested: a boolean mask or the name of a boolean obs column
        (default: every unlabelled cell), e.g. the slide being annotated, or all but a
        held-out test set (settable later: :attr:`Annotator.candidates`).
    fit_kwargs
        Further options of :func:`scresidual.tl.fit_regions` (``encoder``, ``folds``, …).
    color_by
        Initial colouring: ``'labels'``, ``'prediction'``, ``'uncertainty'`` or an obs column.
    height
        Height of the plot in pixels.

    Returns
    -------
    The :class:`Annotator`; it displays as the widget, and its methods (``select``,
    ``assign``, ``erase``, ``undo``, ``redo``, ``refit``) drive it from code.

    """
    from ._annotator_view import AnnotatorView, require_widgets

    require_widgets()
    ann = Annotator(
        adata,
        labels_key,
        autosave=autosave,
        sources=sources,
        features=features,
        library_key=library_key,
        spatial_key=spatial_key,
        table_key=table_key,
        seed=seed,
        auto_refit=auto_refit,
        n_suggestions=n_suggestions,
        candidates=candidates,
        fit_kwargs=fit_kwargs,
    )
    ann.view = AnnotatorView(ann, color_by=color_by, height=height)
    return ann
