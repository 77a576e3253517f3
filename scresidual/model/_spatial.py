"""Label anatomical regions on spatial slides: frozen single-cell source + spatial residual."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import (
    DEFAULT_ENCODER,
    DEFAULT_GRADIENTS,
    DEFAULT_GRAPH,
    DEFAULT_N_HOPS,
    DEFAULT_SIDE_FEATURES,
    ENCODER_SOLVERS,
    MIN_GENE_OVERLAP,
    SPATIAL_KEY,
)
from .._docs import (
    doc_layer_counts,
    doc_min_overlap_model,
    doc_params,
    doc_progress,
    doc_seed_settings,
    doc_spatial_key,
)
from .._errors import ScResidualError
from ..read.sdata import is_spatialdata
from . import _spatial_io
from ._config import ALL_OPTIONS, SOLVER_ALIASES, TRAIN_OPTIONS
from ._residual import ResidualModel, labelled_mask
from ._spatial_sets import write_predictions
from ._spatial_setup import (
    all_features,
    check_setup_args,
    fit_feature_maps,
    is_side_view,
    register,
    registered,
    training_anndata,
)
from ._spatial_views import graph_on, memo_proba, memo_views, reuse_views
from .sdata import predict_spatialdata

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)

TRAINER_OPTIONS = ("accelerator", "devices", "strategy", "progress")
"""Options of :meth:`SpatialRegionClassifier.train` that go to Lightning, not the config."""

_BUILT_ELSEWHERE = ("arm", "head", "guard", "seed", "sources", "residuals")


def spatial_solver(arm: str, encoder: str, head: str = "linear") -> str:
    """The solver that fits a spatial model of ``arm``, ``encoder`` and ``head``.

    The encoder's (:data:`scresidual._constants.ENCODER_SOLVERS`), except that the exact
    engine fits linear models only: the adapter arm and an MLP head train by gradient
    descent whatever the encoder.
    """
    linear = arm != "adapter" and head == "linear"
    return ENCODER_SOLVERS[encoder] if linear else "adam"


def check_model_options(options: dict) -> None:
    """Refuse constructor options that are training options or unknown."""
    training = sorted(set(options) & {*TRAIN_OPTIONS, *TRAINER_OPTIONS})
    if training:
        raise ScResidualError(
            f"{', '.join(training)}: training option(s); pass them to train(), not the constructor."
        )
    allowed = set(ALL_OPTIONS) - {*TRAIN_OPTIONS, *_BUILT_ELSEWHERE}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ScResidualError(
            f"unknown model option(s) {unknown}; setup options go to setup_anndata(), training "
            f"options to train(); model options are {', '.join(sorted(allowed))}."
        )


@doc_params(doc_seed_settings=doc_seed_settings)
class SpatialRegionClassifier:
    """REFINE for spatial slides: frozen source embedding + spatial-graph residual + linear head.

    The lifecycle is scvi-tools': register the training data with :meth:`setup_anndata`
    (labels, slides, coordinates, layer, sources, features, graph; the feature maps are fitted
    there), build the model with the arm and encoder settings, then :meth:`train`::

        SpatialRegionClassifier.setup_anndata(adata, labels_key="region", sources=["obsm:X_scVI"])
        model = SpatialRegionClassifier(adata)
        model.train()
        model.predict(other_slide)

    Parameters
    ----------
    adata
        The AnnData (or :class:`spatialdata.SpatialData`) registered by :meth:`setup_anndata`.
        Cells whose label is missing (NaN or empty) are not trained on.
    arm
        ``'refine'``, ``'scratch'``, ``'linear-probe'`` or ``'adapter'``.
    encoder
        Residual encoder: ``'linear'`` (default; the model is linear and fitted by the exact
        engine, logistic regressions with cross-validated penalties) or ``'hops'``
        (SIGN-style per-ring maps and an MLP, trained by the gradient engine: Adam with early
        stopping). See :func:`spatial_solver`.
    head
        ``'linear'`` (default, robust) or ``'mlp'``.
    guard
        Fall back to scratch or the linear probe when they validate better beyond noise.
    seed
        {doc_seed_settings}
    trust_pickle
        Let ``'scvi:'`` sources hold arbitrary Python objects (see :meth:`ScviSource.load`);
        off by default, for folders from people you trust.
    **model_kwargs
        Further model options of :class:`ResidualModel` (``source_shares``, ``guard_z``,
        ``class_weight``, ``source_dropout``, …); training options go to :meth:`train`.

    Attributes
    ----------
    classes_, chosen_arm_, guard_report_
        After training: the region names (column order of the probabilities), the arm the
        guard kept, and per arm its validation loss and macro-F1.
    residual_model_
        The fitted :class:`ResidualModel` (``None`` before :meth:`train`).

    """

    def __init__(
        self,
        adata: AnnData | SpatialData,
        *,
        arm: str = "refine",
        encoder: str = DEFAULT_ENCODER,
        head: str = "linear",
        guard: bool = True,
        seed: int | None = None,
        trust_pickle: bool = False,
        **model_kwargs,
    ):
        adata, args, pca = registered(adata)
        if encoder not in ENCODER_SOLVERS:
            raise ScResidualError(
                f"unknown encoder {encoder!r}; use one of {', '.join(ENCODER_SOLVERS)}."
            )
        check_model_options(model_kwargs)
        self.adata = adata
        self.setup = {**{k: v for k, v in args.items() if k != "table_key"}, "encoder": encoder}
        self.init_params_ = {
            "arm": arm,
            "head": head,
            "guard": guard,
            "seed": seed,
            **model_kwargs,
        }
        self.trust_pickle = trust_pickle
        self.progress: bool | None = None
        self._pca = pca
        self._frozen: dict[int, object] = {}
        self.residual_model_: ResidualModel | None = None
        self._core()  # validates the arm and head now, not after the views are computed

    @classmethod
    @doc_params(
        doc_spatial_key=doc_spatial_key,
        doc_layer_counts=doc_layer_counts,
        doc_min_overlap_model=doc_min_overlap_model,
    )
    def setup_anndata(
        cls,
        adata: AnnData | SpatialData,
        *,
        labels_key: str,
        sources: Sequence[str] = (),
        features: Sequence[str] = ("pca",),
        side_features: Sequence[str] = DEFAULT_SIDE_FEATURES,
        graph: str = DEFAULT_GRAPH,
        n_hops: int = DEFAULT_N_HOPS,
        aggregate_sources: bool = True,
        gradients: bool = DEFAULT_GRADIENTS,
        library_key: str | None = None,
        spatial_key: str = SPATIAL_KEY,
        layer: str | None = None,
        n_comps: int = 30,
        min_gene_overlap: float = MIN_GENE_OVERLAP,
        table_key: str | None = None,
    ) -> None:
        """Register the training data: what the model reads, with its feature maps fitted.

        Writes ``uns['_scresidual_setup']`` (plain data: these arguments and the fitted PCA;
        for a SpatialData, into its table ``table_key``); nothing else in ``adata`` changes.

        Parameters
        ----------
        adata
            Training slide(s), an AnnData or a :class:`spatialdata.SpatialData` (its table
            ``table_key`` is used, as :func:`scresidual.read.spatialdata` reads it).
        labels_key
            ``obs`` column with the region labels.
        sources
            Frozen sources: ``'obsm:KEY'`` (precomputed embedding), ``'scvi:DIR'`` (an
            scvi-tools model directory, applied to the slide after matching genes). Empty for
            the ``scratch`` arm.
        features
            Target-side inputs of the residual encoders, one encoder each: ``'pca'`` (PCA of
            log-normalised expression, fitted here on ``adata``), ``'neighbourhood-pca'``
            (the same projection, with genes and components fitted on each cell's mean with
            its graph neighbours, as BANKSY's PCA reads the neighbourhood; set up on the
            slide in memory, not on a sample of its cells) or ``'obsm:KEY'`` (e.g. protein).
        side_features
            Further target-side inputs, as ``features``, read as one block of their own (with
            the gradients, if any) that joins scratch with the weight of least out-of-fold
            loss: 0 where they do not help (see ``gradients``). The exact engine's only.
        graph
            Spatial graph: ``'delaunay'`` (default; edges longer than the 99th percentile
            dropped), ``'knn:K'``, ``'radius:R'`` or ``'none'`` (no spatial residual).
        n_hops
            Neighbour rings read: a cell's own values and their means over the cells 1, 2, …
            ``n_hops`` edges away (:func:`scresidual.pp.neighbourhood_rings`).
        aggregate_sources
            Also give the head each frozen source's ring means (parameter-free, so the source
            stays frozen; a linear probe on them is CellCharter's neighbourhood aggregation).
        gradients
            Also read the neighbour gradients (BANKSY's first-order azimuthal gradient over
            the cells up to two edges away: :func:`scresidual.pp.neighbourhood_gradients`) of
            each feature view and, with ``aggregate_sources``, of each frozen source. Each
            branch's gradients are a block of their own, which joins the branch (scratch's
            features, the probe's sources) with the weight of least out-of-fold loss: 0 where
            they do not help. Needs a spatial graph. The gradient engine (``encoder='hops'``,
            the adapter arm, an MLP head) has no side blocks and reads neither gradients nor
            ``side_features``.
        library_key
            ``obs`` column naming each cell's slide: one graph per slide, no edges across; when
            two or more slides are labelled throughout, validation folds hold out whole slides
            (``group_folds``, see :class:`ResidualModel`).
        spatial_key
            {doc_spatial_key}
        layer
            {doc_layer_counts}
        n_comps
            Number of PCA components.
        min_gene_overlap
            {doc_min_overlap_model}
        table_key
            For a SpatialData ``adata``: the table to fit on (may be left out when there is
            only one).

        """
        train = training_anndata(adata, table_key, spatial_key, library_key)
        args = check_setup_args(
            train,
            {
                "labels_key": labels_key,
                "sources": sources,
                "features": features,
                "side_features": side_features,
                "graph": graph,
                "n_hops": n_hops,
                "aggregate_sources": aggregate_sources,
                "gradients": gradients,
                "library_key": library_key,
                "spatial_key": spatial_key,
                "layer": layer,
                "n_comps": n_comps,
                "min_gene_overlap": min_gene_overlap,
                "table_key": table_key,
            },
        )
        register(adata, args, fit_feature_maps(train, args))

    def _core(self, **train_options) -> ResidualModel:
        """A new, unfitted :class:`ResidualModel` with this model's settings and options."""
        options = dict(train_options)
        trainer = {k: options.pop(k) for k in TRAINER_OPTIONS if k in options}
        params = dict(self.init_params_)
        params.setdefault(
            "solver", spatial_solver(params["arm"], self.setup["encoder"], params["head"])
        )
        sources, residuals = self._sources(), self._residuals()
        side = [k for k in [*sources, *residuals] if is_side_view(k, self.setup)]
        if SOLVER_ALIASES.get(params["solver"], params["solver"]) != "newton-cg":
            # side blocks are the exact engine's: the gradient engine reads none of them
            sources = [k for k in sources if k not in side]
            residuals = {k: v for k, v in residuals.items() if k not in side}
            side = []
        return ResidualModel(
            sources=sources,
            residuals=residuals,
            side_blocks=side,
            **params,
            **options,
            **trainer,
        )

    def _sources(self) -> list[str]:
        """One view per frozen source, and its gradients (a side block) with ``gradients``."""
        n = len(self.setup["sources"])
        gradients = self._gradients_on and self.setup["aggregate_sources"]
        return [f"source_{i}" for i in range(n)] + [
            f"source_gradients_{i}" for i in range(n) if gradients
        ]

    def _residuals(self) -> dict[str, tuple[str, dict]]:
        """One residual encoder per feature view."""
        encoder = self.setup["encoder"]
        if encoder == "hops":
            spec = ("hops", {"n_hops": self.setup["n_hops"]}) if self._graph_on else ("mlp", {})
        else:
            spec = (encoder, {})
        n = len(all_features(self.setup))
        gradients = {f"gradients_{j}": ("linear", {}) for j in range(n) if self._gradients_on}
        return {**{f"features_{j}": spec for j in range(n)}, **gradients}

    @property
    def _gradients_on(self) -> bool:
        return bool(self.setup.get("gradients", False))  # setups saved before it lack it

    @property
    def _graph_on(self) -> bool:
        return graph_on(self.setup)

    reuse_views = staticmethod(reuse_views)

    def views(self, adata: AnnData) -> dict[str, np.ndarray]:
        """The model's inputs for ``adata``: source embeddings and features, with ring means."""
        return memo_views(self, adata)

    # ------------------------------------------------------------------ training
    @doc_params(doc_progress=doc_progress)
    def train(
        self,
        max_epochs: int | None = None,
        *,
        accelerator: str = "auto",
        devices: int | str = "auto",
        strategy: str = "auto",
        folds: int | None = None,
        n_jobs: int | None = None,
        progress: bool | None = None,
        **train_kwargs,
    ) -> SpatialRegionClassifier:
        """Fit on the labelled cells of the registered data.

        The options hold for this call only: the model's settings are unchanged, and the
        fitted model records the options it was trained with (saved with it).

        Parameters
        ----------
        max_epochs
            Most epochs per fit of the gradient engine (``encoder='hops'``, the adapter arm or
            an MLP head; default 200). The exact engine (the linear encoder) has no epochs and
            refuses it, as it refuses every option of the other engine, in one line.
        accelerator, devices, strategy
            Passed to :class:`lightning.pytorch.Trainer` (gradient engine only).
        folds
            Both engines: cross-validation folds (exact: default 5; gradient: cross-fitted
            members, default 5 below 1,000 labelled cells, else one split); see
            :class:`ResidualModel`.
        n_jobs
            Both engines: worker processes for the folds (default: gradient, one per
            available CPU on a CPU device; exact, 1).
        progress
            {doc_progress}
        **train_kwargs
            Further training options: both engines' ``validation_size`` and
            ``group_folds``; the exact engine's ``cv_repeats``; the gradient engine's
            ``lr``, ``probe_lr``, ``weight_decay``, ``source_weight_decay``,
            ``batch_size``, ``patience`` and ``min_steps_per_epoch``.

        """
        options = {
            "max_epochs": max_epochs,
            "folds": folds,
            "n_jobs": n_jobs,
            "accelerator": accelerator,
            "devices": devices,
            "strategy": strategy,
            "progress": progress,
            **train_kwargs,
        }
        core = self.training_core(self.adata.obs, **options)
        library_key = self.setup["library_key"]
        groups = None if library_key is None else self.adata.obs[library_key].to_numpy()
        y = self.adata.obs[self.setup["labels_key"]].to_numpy()
        core.fit(self.views(self.adata), y, groups=groups)
        self.residual_model_ = core
        return self

    def training_core(self, obs: pd.DataFrame, **options) -> ResidualModel:
        """The unfitted :class:`ResidualModel` :meth:`train` fits, its ``options`` checked.

        ``obs``: the training cells' ``obs``, whose labels are checked (some must be set).
        """
        unknown = sorted(set(options) - {*TRAIN_OPTIONS, *TRAINER_OPTIONS})
        if unknown:
            raise ScResidualError(
                f"unknown training option(s) {unknown}; use {', '.join(TRAIN_OPTIONS)}."
            )
        if labelled_mask(obs[self.setup["labels_key"]].to_numpy()).sum() == 0:
            raise ScResidualError(
                f"obs[{self.setup['labels_key']!r}] has no labels; label some cells first."
            )
        self.progress = options.get("progress")
        return self._core(**{k: v for k, v in options.items() if v is not None})

    def _fitted(self) -> ResidualModel:
        if self.residual_model_ is None:
            raise ScResidualError("the model is not trained yet; call train() first.")
        return self.residual_model_

    @property
    def classes_(self) -> list[str]:
        """Region names, in the column order of the probabilities."""
        return self._fitted().classes_

    @property
    def chosen_arm_(self) -> str | None:
        """The arm the guard kept (``refine`` unless a fallback validated better)."""
        return self._fitted().chosen_arm_

    @property
    def guard_report_(self) -> dict[str, dict]:
        """Per arm: validation loss and macro-F1, and what was chosen on validation."""
        return self._fitted().guard_report_

    def predict_proba(
        self, adata: AnnData | None = None, *, calibrated: bool = True
    ) -> pd.DataFrame:
        """Class probabilities per cell (a DataFrame; ``adata`` is not modified).

        ``calibrated``: calibrated on the out-of-fold predictions when the model has a
        calibration (:mod:`scresidual.model._calibration`). ``False``: the uncalibrated
        probabilities, the classifier's own with no temperature at all (for the exact linear
        fit, the logistic regressions' probabilities without each block's out-of-fold
        scale; since those scales also weigh REFINE's two blocks, their mixture's argmax may
        differ from the calibrated model's on a few cells). Calibration alone never changes
        the argmax.
        """
        adata = self.adata if adata is None else adata
        P = self.proba_from_views(self.views(adata), calibrated=calibrated)
        return pd.DataFrame(P, index=adata.obs_names, columns=self.classes_)

    def proba_from_views(self, views: dict[str, np.ndarray], *, calibrated: bool = True):
        """:meth:`predict_proba` as an array, from inputs already computed by :meth:`views`."""
        return memo_proba(self, views, calibrated, lambda: self._proba(views, calibrated))

    def _proba(self, views: dict[str, np.ndarray], calibrated: bool) -> np.ndarray:
        core = self._fitted()
        P = core.predict_proba(views, raw=not calibrated)
        if calibrated and core.calibration_ is not None:
            P = core.calibration_.apply(P)
        return P

    def predict(
        self,
        adata: AnnData | SpatialData | None = None,
        *,
        key_added: str | None = None,
        copy: bool = False,
        sets: bool | None = None,
        alpha: float = 0.1,
        method: str = "lac",
        table_key: str | None = None,
    ) -> AnnData | SpatialData | None:
        """Predict regions and store them in ``adata``.

        Writes ``obs['<key>_pred']`` (categorical), ``obsm['<key>_proba']`` (probabilities,
        calibrated out of fold), ``uns['<key>_proba_classes']`` (their column order),
        ``obs['<key>_uncertainty']`` (1 - the highest probability) and
        ``uns['<key>_calibration']`` (temperature, ECE before/after, level), where ``key``
        defaults to the training ``labels_key``.

        With ``sets`` (default: when the model is calibrated; True demands it) also
        split-conformal prediction sets at coverage ``1 - alpha``: ``obs['<key>_set']``
        (classes joined by ``'|'``, most probable first; empty when no class is plausible at
        that level) and ``obs['<key>_set_size']``. ``method``: ``'lac'`` (smallest sets) or
        ``'aps'`` (sets adapt to how hard a cell is). A model that cannot be calibrated says
        why in one line (an error with ``sets=True``, else a logged note).

        ``adata`` may be opened backed (``anndata.read_h5ad(path, backed=...)``): its
        expression is read in row blocks. A file opened read-only (``backed="r"``) cannot
        take the predictions: use :meth:`predict_proba`, or ``copy=True``, which then returns
        an in-memory AnnData with ``obs``, ``var``, ``obsm``, ``uns`` and the predictions but
        without ``X`` (it stays on disk). With ``backed="r+"`` the predictions are added in
        memory; ``adata.write()`` stores them in the file.

        ``adata`` may be a :class:`spatialdata.SpatialData`: the same keys are written into its
        table ``table_key`` (which may be left out when there is only one), in memory, rows in
        the table's order; ``copy=True`` leaves it unchanged and returns a new SpatialData
        with a predicted copy of the table and the other elements shared. Coordinates come
        as :func:`scresidual.read.spatialdata` reads them. ``scresidual predict MODEL
        SLIDE.zarr`` writes them into a ``.zarr`` store atomically.
        """
        if is_spatialdata(adata):
            return predict_spatialdata(
                self,
                adata,
                table_key=table_key,
                key_added=key_added,
                copy=copy,
                sets=sets,
                alpha=alpha,
                method=method,
            )
        if table_key is not None:
            raise ScResidualError(
                "table_key= names a table of a SpatialData; drop it for an AnnData."
            )
        return write_predictions(
            self, adata, key_added=key_added, copy=copy, sets=sets, alpha=alpha, method=method
        )

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Save the model, its feature maps and copies of its scvi sources, atomically."""
        _spatial_io.save(self, path, overwrite=overwrite)

    @classmethod
    def load(
        cls, path: str | Path, *, progress: bool | None = None, trust_pickle: bool = False
    ) -> SpatialRegionClassifier:
        """Load a model written by :meth:`save`.

        Nothing in the folder is run as code; ``trust_pickle=True`` lets its scvi sources
        hold arbitrary Python objects (see :meth:`ScviSource.load`): only for trusted folders.
        """
        return _spatial_io.load(cls, path, progress=progress, trust_pickle=trust_pickle)

    def __repr__(self) -> str:
        core = self.residual_model_
        fitted = f"fitted, arm={core.chosen_arm_!r}" if core is not None else "not fitted"
        return (
            f"SpatialRegionClassifier({fitted}; sources={self.setup['sources']}, "
            f"features={self.setup['features']}, graph={self.setup['graph']!r})"
        )
