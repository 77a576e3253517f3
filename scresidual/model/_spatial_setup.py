"""The setup step of the spatial model: register the training data and fit its feature maps.

As with scvi-tools' ``setup_anndata``, what the model reads from the data is declared once,
before the model is built: labels, slides, coordinates, layer, frozen sources, target-side
features and graph. The feature maps (the PCA of the expression) are fitted here, on the
training data, so no later call can fit them on another slide. The registration is plain data
in ``uns[SETUP_KEY]`` (it survives ``write_h5ad``); nothing is kept in module state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from anndata import AnnData

from .._constants import FEATURE_KINDS, SETUP_KEY
from .._errors import ScResidualError
from .._settings import settings
from .._validate import (
    check_cells,
    check_obs_key,
    check_unique_obs_names,
    parse_graph,
    parse_spec,
)
from ..pp import PCAFeatures, spatial_graph
from ..read.sdata import choose_table, is_spatialdata, spatialdata
from .sdata import warn_several_regions

SETUP_FORMAT = 2
"""Format of the setup (and of ``spatial_setup.json``); 2 added rings, source rings, encoders."""

SOURCE_KINDS = ("obsm", "scvi")
PCA_KINDS = ("pca", "neighbourhood-pca")
"""Feature views computed by a PCA fitted at setup (:class:`scresidual.pp.PCAFeatures`)."""


def all_features(setup: dict) -> list[str]:
    """Every feature view's spec: ``features``, then ``side_features`` (older setups lack it)."""
    return [*setup["features"], *setup.get("side_features", [])]


def is_side_view(name: str, setup: dict) -> bool:
    """Whether the model's view ``name`` is a side block's (one the fit may refuse).

    Those are the neighbour gradients and the side features (``features_j`` after the main
    ones).
    """
    if "gradients_" in name:
        return True
    return name.startswith("features_") and int(name.split("_")[1]) >= len(setup["features"])


def check_setup_args(adata: AnnData, args: dict) -> dict:
    """Validate the setup arguments against ``adata``; return them normalised."""
    check_obs_key(adata, args["labels_key"])
    if args["library_key"] is not None:
        check_obs_key(adata, args["library_key"])
    check_cells(adata, 2, "training")
    check_unique_obs_names(adata)
    sources, features = args["sources"], args["features"]
    sources = [s for s in ([sources] if isinstance(sources, str) else sources) if s != "none"]
    features = [features] if isinstance(features, str) else list(features)
    side = args.get("side_features", ())
    side = [side] if isinstance(side, str) else list(side)
    for s in sources:
        parse_spec(s, SOURCE_KINDS, "source")
    for f in features:
        parse_spec(f, FEATURE_KINDS, "features")
    for f in side:
        parse_spec(f, FEATURE_KINDS, "side_features")
    if not features and side:
        raise ScResidualError(
            "side_features join the features, but features is empty; pass features (e.g. "
            "'pca') or move the side features there."
        )
    graph_on = parse_graph(args["graph"])[0] != "none"
    if "neighbourhood-pca" in [*features, *side] and not graph_on:
        raise ScResidualError(
            "'neighbourhood-pca' averages each cell with its neighbours, but graph='none'; "
            "pass a graph ('delaunay', 'knn:K' or 'radius:R') or use 'pca'."
        )
    gradients = bool(args.get("gradients", False))
    if gradients and not graph_on:
        raise ScResidualError(
            "gradients=True reads the spatial graph, but graph='none'; pass a graph "
            "('delaunay', 'knn:K' or 'radius:R') or drop gradients."
        )
    return {
        **args,
        "format": SETUP_FORMAT,
        "sources": sources,
        "features": features,
        "side_features": side,
        "n_hops": int(args["n_hops"]),
        "aggregate_sources": bool(args["aggregate_sources"]),
        "gradients": gradients,
        "n_comps": int(args["n_comps"]),
        "min_gene_overlap": float(args["min_gene_overlap"]),
    }


def fit_feature_maps(adata: AnnData, args: dict) -> dict[int, PCAFeatures]:
    """The PCA of each ``'pca'`` or ``'neighbourhood-pca'`` feature view, fitted here.

    A neighbourhood PCA is fitted on the cells' neighbour means, over the setup's graph.
    Slides over 50,000 cells are fitted on a sample drawn with ``settings.seed``.
    """
    maps, conn = {}, None
    for j, spec in enumerate(all_features(args)):
        if spec not in PCA_KINDS:
            continue
        if spec == "neighbourhood-pca" and conn is None:
            conn, _ = spatial_graph(
                adata,
                graph=args["graph"],
                spatial_key=args["spatial_key"],
                library_key=args["library_key"],
                copy=True,
            )
        maps[j] = PCAFeatures.fit(
            adata,
            n_comps=args["n_comps"],
            layer=args["layer"],
            seed=settings.seed,
            neighbours=conn if spec == "neighbourhood-pca" else None,
        )
    return maps


def pca_arrays(pca: PCAFeatures) -> dict:
    """The arrays of a fitted PCA: plain data for ``np.savez`` and ``uns`` (no pickle)."""
    return {**vars(pca), "genes": pca.genes.astype(str), "lognorm": np.array(pca.lognorm)}


def pca_from_arrays(d, damaged: str) -> PCAFeatures:
    """Inverse of :func:`pca_arrays`; raises ``damaged`` for missing or mismatched arrays."""
    try:
        genes, mean, comps = (np.asarray(d[k]) for k in ("genes", "mean", "components"))
        lognorm = bool(d["lognorm"])
    except (KeyError, TypeError, ValueError) as err:
        raise ScResidualError(damaged) from err
    if comps.ndim != 2 or not genes.shape == mean.shape == comps.shape[1:]:
        raise ScResidualError(damaged)
    return PCAFeatures(genes.astype(object), mean, comps, lognorm)


def read_pca(file: Path) -> PCAFeatures:
    """A PCA saved in a model folder with ``np.savez(file, **pca_arrays(pca))``."""
    if not file.is_file():
        raise ScResidualError(f"{file} is missing; the model directory is incomplete: refit it.")
    try:
        with np.load(file, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
    except Exception as err:  # truncated zips raise many types
        raise ScResidualError(
            f"cannot read {file} ({type(err).__name__}); the file is corrupted: refit the model."
        ) from err
    return pca_from_arrays(arrays, f"{file} holds missing or mismatched arrays; refit the model.")


def _table_of(sdata, table_key: str | None) -> AnnData:
    """The table of ``sdata`` that is (or will be) registered."""
    return sdata.tables[choose_table(sdata, table_key, "the SpatialData")]


def register(adata, args: dict, pca: dict[int, PCAFeatures]) -> None:
    """Write the setup into ``uns[SETUP_KEY]`` of ``adata`` (a SpatialData: of its table)."""
    target = _table_of(adata, args["table_key"]) if is_spatialdata(adata) else adata
    target.uns[SETUP_KEY] = {
        "args": json.dumps(args),
        "pca": {str(j): pca_arrays(p) for j, p in pca.items()},
    }


def training_anndata(adata, table_key: str | None, spatial_key: str, library_key) -> AnnData:
    """``adata`` itself, or the table of a SpatialData as an AnnData with coordinates."""
    if is_spatialdata(adata):
        out = spatialdata(adata, table_key=table_key, spatial_key=spatial_key)
        warn_several_regions(out, library_key)
        return out
    if table_key is not None:
        raise ScResidualError("table_key= names a table of a SpatialData; drop it for an AnnData.")
    return adata


def registered(adata) -> tuple[AnnData, dict, dict[int, PCAFeatures]]:
    """The training AnnData, setup arguments and feature maps registered on ``adata``."""
    if is_spatialdata(adata):
        names = [k for k, t in adata.tables.items() if SETUP_KEY in t.uns]
        if len(names) != 1:
            raise ScResidualError(
                f"{'no table' if not names else 'several tables'} of the SpatialData "
                "set up; call SpatialRegionClassifier.setup_anndata(sdata, table_key=..., "
                "labels_key=...) first."
            )
        entry = adata.tables[names[0]].uns[SETUP_KEY]
    else:
        entry = adata.uns.get(SETUP_KEY) if isinstance(adata, AnnData) else None
        if entry is None:
            raise ScResidualError(
                "adata is not set up; call SpatialRegionClassifier.setup_anndata(adata, "
                "labels_key=...) first."
            )
    damaged = f"uns[{SETUP_KEY!r}] is damaged; run SpatialRegionClassifier.setup_anndata again."
    try:  # the PCA arrays are checked as a saved model's
        args = json.loads(entry["args"])
        pca = {int(j): pca_from_arrays(d, damaged) for j, d in entry["pca"].items()}
    except (KeyError, TypeError, ValueError) as err:
        raise ScResidualError(damaged) from err
    if not isinstance(args, dict) or args.get("format") != SETUP_FORMAT:
        raise ScResidualError(
            f"uns[{SETUP_KEY!r}] was written by another version; run "
            "SpatialRegionClassifier.setup_anndata again."
        )
    train = training_anndata(adata, args["table_key"], args["spatial_key"], args["library_key"])
    return train, args, pca
