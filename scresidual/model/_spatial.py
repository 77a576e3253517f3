"""Label anatomical regions on spatial slides: frozen single-cell source + spatial residual."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
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
from .._errors import ScResidualError
from .._io import atomic_path, check_model_dir, recover
from .._safe_load import check_spatial_setup, path_inside
from .._validate import (
    check_cells,
    check_finite,
    check_obs_key,
    check_obsm_key,
    check_unique_obs_names,
    parse_spec,
)
from ..pp import PCAFeatures, neighbourhood_rings, parse_graph, read_pca, spatial_graph_matrix
from ..read.sdata import (
    is_spatialdata,
    predict_spatialdata,
    spatialdata,
    warn_several_regions,
)
from ._calibration import (
    calibration_problem,
    check_alpha,
    check_method,
    thin_note,
    write_uncertainty,
)
from ._residual import ResidualModel, labelled_mask

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)

SETUP_FILE = "spatial_setup.json"
SETUP_FORMAT = 2
"""Format of ``spatial_setup.json``; 2 added neighbour rings, source rings and encoders."""


EMBED_CHUNK = 200_000
"""Cells embedded per call of a frozen scvi source (bounds memory on large or backed slides)."""


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


class SpatialRegionClassifier:
    """REFINE for spatial slides: frozen source embedding + spatial-graph residual + linear head.

    Parameters
    ----------
    adata
        Training slide(s), an AnnData or a :class:`spatialdata.SpatialData` (its table
        ``table_key`` is used, as :func:`scresidual.read.spatialdata` reads it). Cells whose
        label is missing (NaN or empty) are not trained on.
    labels_key
        ``obs`` column with the region labels.
    sources
        Frozen sources: ``'obsm:KEY'`` (precomputed embedding), ``'scvi:DIR'`` (an
        scvi-tools model directory, applied to the slide after matching genes). Empty for
        the ``scratch`` arm.
    features
        Target-side inputs of the residual encoders, one encoder each: ``'pca'`` (PCA of
        log-normalised expression) or ``'obsm:KEY'`` (e.g. protein).
    graph
        Spatial graph: ``'delaunay'`` (default; edges longer than the 99th percentile
        dropped), ``'knn:K'``, ``'radius:R'`` or ``'none'`` (no spatial residual).
    n_hops
        Neighbour rings read: a cell's own values and their means over the cells 1, 2, …
        ``n_hops`` edges away (:func:`scresidual.pp.neighbourhood_rings`).
    aggregate_sources
        Also give the head each frozen source's ring means (parameter-free, so the source
        stays frozen; a linear probe on them is CellCharter's neighbourhood aggregation).
    encoder
        Residual encoder: ``'linear'`` (default; the network is linear and fitted exactly,
        each block's penalty by cross-validation) or ``'hops'`` (SIGN-style per-ring maps
        and an MLP, trained with Adam and early stopping).
    library_key
        ``obs`` column naming each cell's slide: one graph per slide, no edges across; when
        two or more slides are labelled throughout, validation folds hold out whole slides
        (``group_folds``, see :class:`ResidualModel`).
    spatial_key
        ``obsm`` key of the coordinates.
    layer
        Layer with counts (for ``'pca'`` and ``'scvi:'``); default ``X``.
    n_comps
        Number of PCA components.
    min_gene_overlap
        Smallest fraction of the genes of the PCA features and of ``'scvi:'`` sources that a
        slide must have (the rest are zero-filled).
    arm
        ``'refine'``, ``'scratch'``, ``'linear-probe'`` or ``'adapter'``.
    seed
        Random seed (default :attr:`scresidual.settings.seed`).
    table_key
        For a SpatialData ``adata``: the table to fit on (may be left out when there is only
        one).
    trust_pickle
        (attribute) Let ``'scvi:'`` sources hold arbitrary Python objects (see
        :meth:`ScviSource.load`); off by default, for folders from people you trust.
    **kwargs
        Passed to :class:`ResidualModel` (``guard``, ``max_epochs``, ``accelerator``, …).

    """

    trust_pickle: bool = False

    def __init__(
        self,
        adata: AnnData | SpatialData,
        *,
        labels_key: str,
        sources: Sequence[str] = (),
        features: Sequence[str] = ("pca",),
        graph: str = DEFAULT_GRAPH,
        n_hops: int = DEFAULT_N_HOPS,
        aggregate_sources: bool = True,
        encoder: str = DEFAULT_ENCODER,
        library_key: str | None = None,
        spatial_key: str = SPATIAL_KEY,
        layer: str | None = None,
        n_comps: int = 30,
        min_gene_overlap: float = MIN_GENE_OVERLAP,
        arm: str = "refine",
        seed: int | None = None,
        table_key: str | None = None,
        **kwargs,
    ):
        if is_spatialdata(adata):
            adata = spatialdata(adata, table_key=table_key, spatial_key=spatial_key)
            warn_several_regions(adata, library_key)
        elif table_key is not None:
            raise ScResidualError(
                "table_key= names a table of a SpatialData; drop it for an AnnData."
            )
        check_obs_key(adata, labels_key)
        if library_key is not None:
            check_obs_key(adata, library_key)
        check_cells(adata, 2, "training")
        check_unique_obs_names(adata)
        sources = [s for s in ([sources] if isinstance(sources, str) else sources) if s != "none"]
        features = [features] if isinstance(features, str) else list(features)
        for s in sources:
            parse_spec(s, ("obsm", "scvi"), "source")
        for f in features:
            parse_spec(f, ("pca", "obsm"), "features")
        parse_graph(graph)
        if encoder not in ENCODER_SOLVERS:
            raise ScResidualError(
                f"unknown encoder {encoder!r}; use one of {', '.join(ENCODER_SOLVERS)}."
            )
        self.setup = {
            "format": SETUP_FORMAT, "labels_key": labels_key, "sources": list(sources),
            "features": features, "graph": graph, "n_hops": int(n_hops),
            "aggregate_sources": bool(aggregate_sources), "encoder": encoder,
            "library_key": library_key, "spatial_key": spatial_key, "layer": layer,
            "n_comps": int(n_comps), "min_gene_overlap": float(min_gene_overlap),
        }
        self.adata = adata
        self._pca: dict[int, PCAFeatures] = {}
        self._frozen: dict[int, object] = {}
        # The exact solver fits linear models only: the adapter arm and deeper heads train
        # by gradient descent whatever the encoder.
        linear = arm != "adapter" and kwargs.get("head", "linear") == "linear"
        kwargs.setdefault("solver", ENCODER_SOLVERS[encoder] if linear else "adam")
        self.model = ResidualModel(
            arm=arm, sources=[f"source_{i}" for i in range(len(sources))],
            residuals=self._residuals(), seed=seed, **kwargs,
        )

    def _residuals(self) -> dict[str, tuple[str, dict]]:
        """One residual encoder per feature view."""
        encoder, graph_on = self.setup["encoder"], self._graph_on
        if encoder == "hops":
            spec = ("hops", {"n_hops": self.setup["n_hops"]}) if graph_on else ("mlp", {})
        else:
            spec = (encoder, {})
        return {f"features_{j}": spec for j in range(len(self.setup["features"]))}

    @property
    def _graph_on(self) -> bool:
        return parse_graph(self.setup["graph"])[0] != "none"

    # ------------------------------------------------------------------ views
    def _source(self, i: int, adata: AnnData) -> np.ndarray:
        kind, value = parse_spec(self.setup["sources"][i], ("obsm", "scvi"), "source")
        if kind == "obsm":
            check_obsm_key(adata, value)
            Z = np.asarray(adata.obsm[value], dtype=np.float32)
        else:
            if i not in self._frozen:
                from ..sources import ScviSource

                self._frozen[i] = ScviSource.load(
                    self._scvi_dir(value), layer=self.setup["layer"],
                    min_overlap=self._min_gene_overlap, trust_pickle=self.trust_pickle,
                )
            Z = _embed_in_chunks(self._frozen[i], adata, progress=self.model.progress)
        check_finite(Z, f"source {self.setup['sources'][i]!r}")
        return Z.reshape(adata.n_obs, -1)

    def _scvi_dir(self, value: str) -> Path:
        """The folder of an ``'scvi:'`` source; a loaded model's must lie inside its folder."""
        if getattr(self, "_model_dir", None):
            return path_inside(self._model_dir, value, what=SETUP_FILE)
        return Path(value)

    def _features(self, j: int, adata: AnnData) -> np.ndarray:
        kind, value = parse_spec(self.setup["features"][j], ("pca", "obsm"), "features")
        if kind == "obsm":
            check_obsm_key(adata, value)
            X = np.asarray(adata.obsm[value], dtype=np.float32).reshape(adata.n_obs, -1)
            check_finite(X, f"adata.obsm[{value!r}]")
            return X
        if j not in self._pca:
            raise ScResidualError("the model is not trained yet; call train() first.")
        return self._pca[j].transform(
            adata, layer=self.setup["layer"], min_overlap=self._min_gene_overlap
        )

    @property
    def _min_gene_overlap(self) -> float:
        # Models saved before the option existed used the default.
        return self.setup.get("min_gene_overlap", MIN_GENE_OVERLAP)

    def _fit_feature_maps(self) -> None:
        """Fit the PCA of each ``'pca'`` feature view on the training slide(s), once."""
        for j, spec in enumerate(self.setup["features"]):
            if spec == "pca" and j not in self._pca:
                self._pca[j] = PCAFeatures.fit(
                    self.adata, n_comps=self.setup["n_comps"], layer=self.setup["layer"],
                    seed=self.model.config.seed,
                )

    def views(self, adata: AnnData) -> dict[str, np.ndarray]:
        """The model's inputs for ``adata``: source embeddings and features, with ring means."""
        check_cells(adata, 1, "labelling")
        check_unique_obs_names(adata)
        out = {f"source_{i}": self._source(i, adata) for i in range(len(self.setup["sources"]))}
        conn = None
        if self._graph_on:
            library_key = self.setup["library_key"]
            if library_key is not None and library_key not in adata.obs:
                library_key = None  # a single new slide without the slide column
            conn, _ = spatial_graph_matrix(
                adata, self.setup["graph"], spatial_key=self.setup["spatial_key"],
                library_key=library_key,
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
    def train(self, **overrides) -> SpatialRegionClassifier:
        """Fit on the labelled cells of the training AnnData.

        ``overrides`` update training options (e.g. ``max_epochs=50``) of :class:`ResidualConfig`;
        they stay set for later calls and are saved with the model, as the options it was
        trained with.
        """
        for k, v in overrides.items():
            if not hasattr(self.model.config, k):
                raise ScResidualError(f"unknown training option {k!r}; see ResidualConfig.")
            setattr(self.model.config, k, v)
        y = self.adata.obs[self.setup["labels_key"]].to_numpy()
        if labelled_mask(y).sum() == 0:
            raise ScResidualError(
                f"obs[{self.setup['labels_key']!r}] has no labels; label some cells first."
            )
        self._fit_feature_maps()
        library_key = self.setup["library_key"]
        groups = None if library_key is None else self.adata.obs[library_key].to_numpy()
        self.model.fit(self.views(self.adata), y, groups=groups)
        return self

    @property
    def classes_(self) -> list[str]:
        """Region names, in the column order of the probabilities."""
        return self.model.classes_

    @property
    def chosen_arm_(self) -> str | None:
        """The arm the guard kept (``refine`` unless a fallback validated better)."""
        return self.model.chosen_arm_

    @property
    def guard_report_(self) -> dict[str, dict]:
        """Per arm: validation loss and macro-F1, and what was chosen on validation."""
        return self.model.guard_report_

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
        P = self.model.predict_proba(self.views(adata), raw=not calibrated)
        if calibrated and self.model.calibration_ is not None:
            P = self.model.calibration_.apply(P)
        return pd.DataFrame(P, index=adata.obs_names, columns=self.classes_)

    def predict(
        self, adata: AnnData | SpatialData | None = None, *, key_added: str | None = None,
        copy: bool = False, sets: bool | None = None, alpha: float = 0.1, method: str = "lac",
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
                self, adata, table_key=table_key, key_added=key_added, copy=copy, sets=sets,
                alpha=alpha, method=method,
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
        problem = calibration_problem(self.model)
        if problem and sets:
            raise ScResidualError(problem)
        proba = self.predict_proba(adata)  # first: a source that cannot load fails alone
        if problem and sets is None:
            logger.warning("no prediction sets: %s", problem)
        if copy and adata.isbacked:
            # X stays on disk; the copy carries everything else and the predictions.
            adata = AnnData(
                obs=adata.obs.copy(), var=adata.var.copy(),
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
        if write_sets and self.model.calibration_.thin_classes:
            logger.warning("%s", thin_note(self.model.calibration_.thin_classes))
        write_uncertainty(adata, key, proba.to_numpy(), self.classes_, self.model.calibration_,
                          sets=write_sets, alpha=alpha, method=method)
        return adata if copy else None

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Save the model, its feature maps and copies of its scvi sources, atomically."""
        path = Path(path)
        check_model_dir(path, overwrite=overwrite, flag="overwrite=True")
        setup = dict(self.setup)
        with atomic_path(path) as tmp:
            tmp.mkdir()
            self.model.write(tmp)
            setup["sources"] = []
            for i, spec in enumerate(self.setup["sources"]):
                kind, value = parse_spec(spec, ("obsm", "scvi"), "source")
                if kind == "scvi":
                    src = self._frozen[i].model_dir if i in self._frozen else self._scvi_dir(value)
                    shutil.copytree(src, tmp / "sources" / f"source_{i}")
                    spec = f"scvi:sources/source_{i}"
                setup["sources"].append(spec)
            for j, pca in self._pca.items():
                np.savez(tmp / f"features_{j}_pca.npz", **pca.to_dict())
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
        self._model_dir = path
        self.model = ResidualModel.load(path, progress=progress)
        self.setup = check_spatial_setup(
            setup, path / SETUP_FILE, n_sources=len(self.model.config.sources),
            n_features=len(self.model.config.residuals),
        )
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
        fitted = f"fitted, arm={self.model.chosen_arm_!r}" if self.model.network else "not fitted"
        return (
            f"SpatialRegionClassifier({fitted}; sources={self.setup['sources']}, "
            f"features={self.setup['features']}, graph={self.setup['graph']!r})"
        )
