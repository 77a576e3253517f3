"""Label anatomical regions on spatial slides: frozen single-cell source + spatial residual."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import (
    DEFAULT_ENCODER,
    DEFAULT_GRAPH,
    DEFAULT_N_HOPS,
    ENCODER_SOLVERS,
    MIN_GENE_OVERLAP,
    SPATIAL_KEY,
    pred_key,
    proba_classes_key,
    proba_key,
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
from .._io import atomic_path, check_model_dir, recover
from .._safe_load import check_spatial_setup, path_inside
from .._validate import (
    check_cells,
    check_finite,
    check_obsm_key,
    check_unique_obs_names,
    parse_graph,
    parse_spec,
)
from ..pp import neighbourhood_rings, spatial_graph
from ..read.sdata import is_spatialdata
from ._calibration import (
    calibration_problem,
    check_alpha,
    check_method,
    thin_note,
    write_uncertainty,
)
from ._residual import TRAIN_OPTIONS, ResidualConfig, ResidualModel, labelled_mask
from ._spatial_setup import (
    FEATURE_KINDS,
    SETUP_FORMAT,
    SOURCE_KINDS,
    check_setup_args,
    fit_feature_maps,
    pca_arrays,
    read_pca,
    register,
    registered,
    training_anndata,
)
from .sdata import predict_spatialdata

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)

SETUP_FILE = "spatial_setup.json"

TRAINER_OPTIONS = ("accelerator", "devices", "strategy", "progress")
"""Options of :meth:`SpatialRegionClassifier.train` that go to Lightning, not the config."""

_BUILT_ELSEWHERE = ("arm", "head", "guard", "seed", "sources", "residuals")


_VIEWS_MEMO: ContextVar[dict | None] = ContextVar("scresidual_views_memo", default=None)
"""Inputs computed inside :meth:`SpatialRegionClassifier.reuse_views`, by (model, AnnData)."""

EMBED_CHUNK = 200_000
"""Cells embedded per call of a frozen scvi source (bounds memory on large or backed slides)."""


def check_model_options(options: dict) -> None:
    """Refuse constructor options that are training options or unknown."""
    training = sorted(set(options) & {*TRAIN_OPTIONS, *TRAINER_OPTIONS})
    if training:
        raise ScResidualError(
            f"{', '.join(training)}: training option(s); pass them to train(), not the constructor."
        )
    allowed = set(ResidualConfig.__dataclass_fields__) - {*TRAIN_OPTIONS, *_BUILT_ELSEWHERE}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ScResidualError(
            f"unknown model option(s) {unknown}; setup options go to setup_anndata(), training "
            f"options to train(); model options are {', '.join(sorted(allowed))}."
        )


def _read_only(adata: AnnData) -> bool:
    """Whether ``adata`` is backed by a file opened read-only."""
    if not adata.isbacked:
        return False
    mode = getattr(getattr(adata.file, "_file", None), "mode", "r")
    return mode != "r+"


def _embed_in_chunks(source, adata: AnnData, *, progress: bool | None) -> np.ndarray:
    """``source.embed`` over row blocks of ``adata`` (backed blocks are read into memory)."""
    if adata.n_obs <= EMBED_CHUNK and not adata.isbacked:
        return source.embed(adata, progress=progress)
    parts = []
    for start in range(0, adata.n_obs, EMBED_CHUNK):
        block = adata[start : start + EMBED_CHUNK]
        block = block.to_memory() if adata.isbacked else block
        parts.append(np.asarray(source.embed(block, progress=progress), dtype=np.float32))
    return np.concatenate(parts)


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
        Residual encoder: ``'linear'`` (default; the network is linear and fitted exactly,
        each block's penalty by cross-validation) or ``'hops'`` (SIGN-style per-ring maps
        and an MLP, trained with Adam and early stopping).
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
        Further model options of :class:`ResidualConfig` (``source_shares``, ``guard_z``,
        ``class_weight``, …); training options go to :meth:`train`.

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
        graph: str = DEFAULT_GRAPH,
        n_hops: int = DEFAULT_N_HOPS,
        aggregate_sources: bool = True,
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
            log-normalised expression, fitted here on ``adata``) or ``'obsm:KEY'`` (e.g.
            protein).
        graph
            Spatial graph: ``'delaunay'`` (default; edges longer than the 99th percentile
            dropped), ``'knn:K'``, ``'radius:R'`` or ``'none'`` (no spatial residual).
        n_hops
            Neighbour rings read: a cell's own values and their means over the cells 1, 2, …
            ``n_hops`` edges away (:func:`scresidual.pp.neighbourhood_rings`).
        aggregate_sources
            Also give the head each frozen source's ring means (parameter-free, so the source
            stays frozen; a linear probe on them is CellCharter's neighbourhood aggregation).
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
                "graph": graph,
                "n_hops": n_hops,
                "aggregate_sources": aggregate_sources,
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
        # The exact solver fits linear models only: the adapter arm and deeper heads train
        # by gradient descent whatever the encoder.
        linear = params["arm"] != "adapter" and params["head"] == "linear"
        params.setdefault("solver", ENCODER_SOLVERS[self.setup["encoder"]] if linear else "adam")
        return ResidualModel(
            sources=[f"source_{i}" for i in range(len(self.setup["sources"]))],
            residuals=self._residuals(),
            **params,
            **options,
            **trainer,
        )

    def _residuals(self) -> dict[str, tuple[str, dict]]:
        """One residual encoder per feature view."""
        encoder = self.setup["encoder"]
        if encoder == "hops":
            spec = ("hops", {"n_hops": self.setup["n_hops"]}) if self._graph_on else ("mlp", {})
        else:
            spec = (encoder, {})
        return {f"features_{j}": spec for j in range(len(self.setup["features"]))}

    @property
    def _graph_on(self) -> bool:
        return parse_graph(self.setup["graph"])[0] != "none"

    # ------------------------------------------------------------------ views
    def _source(self, i: int, adata: AnnData) -> np.ndarray:
        kind, value = parse_spec(self.setup["sources"][i], SOURCE_KINDS, "source")
        if kind == "obsm":
            check_obsm_key(adata, value)
            Z = np.asarray(adata.obsm[value], dtype=np.float32)
        else:
            if i not in self._frozen:
                from ..sources import ScviSource

                self._frozen[i] = ScviSource.load(
                    self._scvi_dir(value),
                    layer=self.setup["layer"],
                    min_overlap=self._min_gene_overlap,
                    trust_pickle=self.trust_pickle,
                )
            Z = _embed_in_chunks(self._frozen[i], adata, progress=self.progress)
        check_finite(Z, f"source {self.setup['sources'][i]!r}")
        return Z.reshape(adata.n_obs, -1)

    def _scvi_dir(self, value: str) -> Path:
        """The folder of an ``'scvi:'`` source; a loaded model's must lie inside its folder."""
        if getattr(self, "_model_dir", None):
            return path_inside(self._model_dir, value, what=SETUP_FILE)
        return Path(value)

    def _features(self, j: int, adata: AnnData) -> np.ndarray:
        kind, value = parse_spec(self.setup["features"][j], FEATURE_KINDS, "features")
        if kind == "obsm":
            check_obsm_key(adata, value)
            X = np.asarray(adata.obsm[value], dtype=np.float32).reshape(adata.n_obs, -1)
            check_finite(X, f"adata.obsm[{value!r}]")
            return X
        return self._pca[j].transform(
            adata, layer=self.setup["layer"], min_overlap=self._min_gene_overlap
        )

    @property
    def _min_gene_overlap(self) -> float:
        # Models saved before the option existed used the default.
        return self.setup.get("min_gene_overlap", MIN_GENE_OVERLAP)

    @staticmethod
    @contextmanager
    def reuse_views(memo: dict | None = None) -> Iterator[None]:
        """Compute the inputs (and probabilities) for an AnnData once inside this block.

        ``train``, ``predict``, ``predict_proba`` and
        :func:`scresidual.tl.suggest_labels` each compute a model's inputs (spatial graph,
        source embeddings, features and ring means) and the last three its probabilities.
        Inside the block the inputs of an AnnData (the same object, which must not change
        meanwhile) are computed once for every model with the same setup and feature maps,
        whatever its labels, and each model's probabilities once. Pass the same ``memo``
        dict to several blocks to keep the inputs between them (the annotation widget does,
        from one refit to the next); probabilities are not kept.
        """
        memo = {} if memo is None else memo
        token = _VIEWS_MEMO.set(memo)
        try:
            yield
        finally:
            _VIEWS_MEMO.reset(token)
            for key in [k for k in memo if k[0] == "proba"]:
                del memo[key]

    def _inputs_token(self) -> str:
        """A digest of what the inputs depend on: the setup (not the labels), feature maps."""
        setup = {k: v for k, v in self.setup.items() if k != "labels_key"}
        digest = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode())
        for j in sorted(self._pca):
            for name, value in sorted(pca_arrays(self._pca[j]).items()):
                digest.update(name.encode() + np.ascontiguousarray(value).tobytes())
        return digest.hexdigest()

    def views(self, adata: AnnData) -> dict[str, np.ndarray]:
        """The model's inputs for ``adata``: source embeddings and features, with ring means."""
        memo = _VIEWS_MEMO.get()
        if memo is None:
            return self._compute_views(adata)
        key = ("views", id(adata), self._inputs_token())
        if key not in memo:  # the AnnData is kept with them, so that its id is not reused
            memo[key] = (adata, self._compute_views(adata))
        return memo[key][1]  # the same dict: its probabilities are reused too

    def _compute_views(self, adata: AnnData) -> dict[str, np.ndarray]:
        check_cells(adata, 1, "labelling")
        check_unique_obs_names(adata)
        out = {f"source_{i}": self._source(i, adata) for i in range(len(self.setup["sources"]))}
        conn = None
        if self._graph_on:
            library_key = self.setup["library_key"]
            if library_key is not None and library_key not in adata.obs:
                library_key = None  # a single new slide without the slide column
            conn, _ = spatial_graph(
                adata,
                graph=self.setup["graph"],
                spatial_key=self.setup["spatial_key"],
                library_key=library_key,
                copy=True,
            )
        rings = self.setup["n_hops"]
        if conn is not None and self.setup["aggregate_sources"]:
            for name, Z in out.items():
                out[name] = neighbourhood_rings(Z, conn, rings).reshape(adata.n_obs, -1)
        for j in range(len(self.setup["features"])):
            X = self._features(j, adata)
            if conn is not None:
                X = neighbourhood_rings(X, conn, rings).reshape(adata.n_obs, -1)
            out[f"features_{j}"] = X
        return out

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
            Epochs of gradient-descent arms (default 200; the exact linear fit has none).
        accelerator, devices, strategy
            Passed to :class:`lightning.pytorch.Trainer`.
        folds
            Cross-validation folds (default: 5 below 1,000 labelled cells, else one split).
        n_jobs
            Processes fitting the folds (default: one per available CPU on a CPU device).
        progress
            {doc_progress}
        **train_kwargs
            Further training options of :class:`ResidualConfig` (``lr``, ``batch_size``,
            ``patience``, ``validation_size``, ``group_folds``, ``cv_repeats``, …).

        """
        unknown = sorted(set(train_kwargs) - set(TRAIN_OPTIONS))
        if unknown:
            raise ScResidualError(
                f"unknown training option(s) {unknown}; use {', '.join(TRAIN_OPTIONS)}."
            )
        y = self.adata.obs[self.setup["labels_key"]].to_numpy()
        if labelled_mask(y).sum() == 0:
            raise ScResidualError(
                f"obs[{self.setup['labels_key']!r}] has no labels; label some cells first."
            )
        options = {"max_epochs": max_epochs, "folds": folds, "n_jobs": n_jobs, **train_kwargs}
        core = self._core(
            **{k: v for k, v in options.items() if v is not None},
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            progress=progress,
        )
        self.progress = progress
        library_key = self.setup["library_key"]
        groups = None if library_key is None else self.adata.obs[library_key].to_numpy()
        core.fit(self.views(self.adata), y, groups=groups)
        self.residual_model_ = core
        return self

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
        memo = _VIEWS_MEMO.get()
        key = ("proba", id(self), id(views), calibrated)
        if memo is not None and key in memo:
            return memo[key][1].copy()
        core = self._fitted()
        P = core.predict_proba(views, raw=not calibrated)
        if calibrated and core.calibration_ is not None:
            P = core.calibration_.apply(P)
        if memo is not None:
            memo[key] = (views, P.copy())
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
        adata = self.adata if adata is None else adata
        key = key_added or self.setup["labels_key"]
        if _read_only(adata) and not copy:
            raise ScResidualError(
                f"adata is backed by {adata.filename} opened read-only; use predict_proba(adata) "
                "for the probabilities, predict(adata, copy=True), or open it with backed='r+'."
            )
        check_alpha(alpha)
        check_method(method)
        core = self._fitted()
        problem = calibration_problem(core)
        if problem and sets:
            raise ScResidualError(problem)
        proba = self.predict_proba(adata)  # first: a source that cannot load fails alone
        if problem and sets is None:
            logger.warning("no prediction sets: %s", problem)
        if copy and adata.isbacked:
            # X stays on disk; the copy carries everything else and the predictions.
            adata = AnnData(
                obs=adata.obs.copy(),
                var=adata.var.copy(),
                obsm={k: np.asarray(v).copy() for k, v in adata.obsm.items()},
                uns=dict(adata.uns),
            )
        elif copy:
            adata = adata.copy()
        adata.obs[pred_key(key)] = pd.Categorical(
            np.asarray(self.classes_, dtype=object)[proba.to_numpy().argmax(1)],
            categories=self.classes_,
        )
        adata.obsm[proba_key(key)] = proba.to_numpy().astype(np.float32)
        adata.uns[proba_classes_key(key)] = np.asarray(self.classes_, dtype=object)
        write_sets = sets is not False and not problem
        if write_sets and core.calibration_.thin_classes:
            logger.warning("%s", thin_note(core.calibration_.thin_classes))
        write_uncertainty(
            adata,
            key,
            proba.to_numpy(),
            self.classes_,
            core.calibration_,
            sets=write_sets,
            alpha=alpha,
            method=method,
        )
        return adata if copy else None

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Save the model, its feature maps and copies of its scvi sources, atomically."""
        core = self._fitted()
        path = Path(path)
        check_model_dir(path, overwrite=overwrite, flag="overwrite=True")
        setup = dict(self.setup)
        with atomic_path(path) as tmp:
            tmp.mkdir()
            core.write(tmp)
            setup["sources"] = []
            for i, spec in enumerate(self.setup["sources"]):
                kind, value = parse_spec(spec, SOURCE_KINDS, "source")
                if kind == "scvi":
                    src = self._frozen[i].model_dir if i in self._frozen else self._scvi_dir(value)
                    shutil.copytree(src, tmp / "sources" / f"source_{i}")
                    spec = f"scvi:sources/source_{i}"
                setup["sources"].append(spec)
            for j, pca in self._pca.items():
                np.savez(tmp / f"features_{j}_pca.npz", **pca_arrays(pca))
            (tmp / SETUP_FILE).write_text(json.dumps(setup, indent=2))

    @classmethod
    def load(
        cls, path: str | Path, *, progress: bool | None = None, trust_pickle: bool = False
    ) -> SpatialRegionClassifier:
        """Load a model written by :meth:`save`.

        Nothing in the folder is run as code; ``trust_pickle=True`` lets its scvi sources
        hold arbitrary Python objects (see :meth:`ScviSource.load`): only for trusted folders.
        """
        path = Path(path)
        recover(path)
        if not (path / SETUP_FILE).is_file():
            raise ScResidualError(
                f"{path} is not a saved SpatialRegionClassifier (no {SETUP_FILE}); pass the "
                "directory written by save() or `scresidual fit --model-dir`."
            )
        try:
            setup = json.loads((path / SETUP_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ScResidualError(f"{path / SETUP_FILE} is corrupted; refit the model.") from err
        if not isinstance(setup, dict) or setup.get("format") != SETUP_FORMAT:
            found = setup.get("format", 1) if isinstance(setup, dict) else "unknown"
            raise ScResidualError(
                f"{path} holds a spatial model in format {found}; this version reads format "
                f"{SETUP_FORMAT}: refit it with `scresidual fit` (or install the version that "
                "wrote it)."
            )
        self = cls.__new__(cls)
        self.adata, self._frozen, self.trust_pickle = None, {}, trust_pickle
        self._model_dir, self.progress = path, progress
        self.residual_model_ = core = ResidualModel.load(path, progress=progress)
        self.setup = check_spatial_setup(
            setup,
            path / SETUP_FILE,
            n_sources=len(core.config.sources),
            n_features=len(core.config.residuals),
        )
        cfg = core.config
        self.init_params_ = {"arm": cfg.arm, "head": cfg.head, "guard": cfg.guard, "seed": cfg.seed}
        if setup["encoder"] not in ENCODER_SOLVERS:
            raise ScResidualError(
                f"{path / SETUP_FILE} names an unknown encoder; the model folder is damaged: "
                "refit the model."
            )
        self._pca = {}
        for j, spec in enumerate(setup["features"]):
            if spec == "pca":
                self._pca[j] = read_pca(path / f"features_{j}_pca.npz")
        return self

    def __repr__(self) -> str:
        core = self.residual_model_
        fitted = f"fitted, arm={core.chosen_arm_!r}" if core is not None else "not fitted"
        return (
            f"SpatialRegionClassifier({fitted}; sources={self.setup['sources']}, "
            f"features={self.setup['features']}, graph={self.setup['graph']!r})"
        )
