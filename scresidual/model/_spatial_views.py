"""The spatial model's inputs: frozen source embeddings and target features, with ring means."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
from anndata import AnnData

from .._constants import FEATURE_KINDS, MIN_GENE_OVERLAP
from .._safe_load import path_inside
from .._validate import (
    check_cells,
    check_finite,
    check_obsm_key,
    check_spatial,
    check_unique_obs_names,
    parse_graph,
    parse_spec,
)
from ..pp import neighbourhood_gradients, neighbourhood_rings, spatial_graph
from ._spatial_setup import SOURCE_KINDS, all_features, pca_arrays

SETUP_FILE = "spatial_setup.json"

_MEMO: ContextVar[dict | None] = ContextVar("scresidual_views_memo", default=None)
"""Inputs and probabilities computed inside :func:`reuse_views`."""

EMBED_CHUNK = 200_000
"""Cells embedded per call of a frozen scvi source (bounds memory on large or backed slides)."""


def graph_on(setup: dict) -> bool:
    """Whether the setup reads a spatial graph."""
    return parse_graph(setup["graph"])[0] != "none"


def min_gene_overlap(setup: dict) -> float:
    # Models saved before the option existed used the default.
    return setup.get("min_gene_overlap", MIN_GENE_OVERLAP)


def embed_in_chunks(source, adata: AnnData, *, progress: bool | None) -> np.ndarray:
    """``source.embed`` over row blocks of ``adata`` (backed blocks are read into memory)."""
    if adata.n_obs <= EMBED_CHUNK and not adata.isbacked:
        return source.embed(adata, progress=progress)
    parts = []
    for start in range(0, adata.n_obs, EMBED_CHUNK):
        block = adata[start : start + EMBED_CHUNK]
        block = block.to_memory() if adata.isbacked else block
        parts.append(np.asarray(source.embed(block, progress=progress), dtype=np.float32))
    return np.concatenate(parts)


def scvi_dir(model, value: str) -> Path:
    """The folder of an ``'scvi:'`` source; a loaded model's must lie inside its folder."""
    if getattr(model, "_model_dir", None):
        return path_inside(model._model_dir, value, what=SETUP_FILE)
    return Path(value)


def source_view(model, i: int, adata: AnnData) -> np.ndarray:
    """The ``i``-th frozen source's embedding of ``adata`` (an scvi source loads once)."""
    kind, value = parse_spec(model.setup["sources"][i], SOURCE_KINDS, "source")
    if kind == "obsm":
        check_obsm_key(adata, value)
        Z = np.asarray(adata.obsm[value], dtype=np.float32)
    else:
        if i not in model._frozen:
            from ..sources import ScviSource

            model._frozen[i] = ScviSource.load(
                scvi_dir(model, value),
                layer=model.setup["layer"],
                min_overlap=min_gene_overlap(model.setup),
                trust_pickle=model.trust_pickle,
            )
        Z = embed_in_chunks(model._frozen[i], adata, progress=model.progress)
    check_finite(Z, f"source {model.setup['sources'][i]!r}")
    return Z.reshape(adata.n_obs, -1)


def feature_view(model, j: int, adata: AnnData) -> np.ndarray:
    """The ``j``-th target-side features of ``adata`` (an ``obsm`` entry or the fitted PCA)."""
    kind, value = parse_spec(all_features(model.setup)[j], FEATURE_KINDS, "features")
    if kind == "obsm":
        check_obsm_key(adata, value)
        X = np.asarray(adata.obsm[value], dtype=np.float32).reshape(adata.n_obs, -1)
        check_finite(X, f"adata.obsm[{value!r}]")
        return X
    return model._pca[j].transform(
        adata, layer=model.setup["layer"], min_overlap=min_gene_overlap(model.setup)
    )


def spatial_views(model, adata: AnnData) -> dict[str, np.ndarray]:
    """``model``'s inputs for ``adata``: source embeddings and features, with ring means."""
    setup = model.setup
    check_cells(adata, 1, "labelling")
    check_unique_obs_names(adata)
    out = {f"source_{i}": source_view(model, i, adata) for i in range(len(setup["sources"]))}
    conn = None
    if graph_on(setup):
        library_key = setup["library_key"]
        if library_key is not None and library_key not in adata.obs:
            library_key = None  # a single new slide without the slide column
        conn, _ = spatial_graph(
            adata,
            graph=setup["graph"],
            spatial_key=setup["spatial_key"],
            library_key=library_key,
            copy=True,
        )
    rings = setup["n_hops"]
    gradients = conn is not None and setup.get("gradients", False)  # older setups lack it
    if gradients:
        xy = check_spatial(adata, setup["spatial_key"])
    if conn is not None and setup["aggregate_sources"]:
        for i in range(len(setup["sources"])):
            Z = out[f"source_{i}"]
            if gradients:
                out[f"source_gradients_{i}"] = neighbourhood_gradients(Z, xy, conn, min(2, rings))
            out[f"source_{i}"] = neighbourhood_rings(Z, conn, rings).reshape(adata.n_obs, -1)
    for j in range(len(all_features(setup))):
        X = feature_view(model, j, adata)
        if gradients:
            out[f"gradients_{j}"] = neighbourhood_gradients(X, xy, conn, min(2, rings))
        if conn is not None:
            X = neighbourhood_rings(X, conn, rings).reshape(adata.n_obs, -1)
        out[f"features_{j}"] = X
    return out


@contextmanager
def reuse_views(memo: dict | None = None) -> Iterator[None]:
    """Compute the inputs (and probabilities) for an AnnData once inside this block.

    ``train``, ``predict``, ``predict_proba`` and :func:`scresidual.tl.suggest_labels` each
    compute a model's inputs (spatial graph, source embeddings, features and ring means) and
    the last three its probabilities. Inside the block the inputs of an AnnData (the same
    object, which must not change meanwhile) are computed once for every model with the same
    setup and feature maps, whatever its labels, and each model's probabilities once. Pass
    the same ``memo`` dict to several blocks to keep the inputs between them (the annotation
    widget does, from one refit to the next); probabilities are not kept.
    """
    memo = {} if memo is None else memo
    token = _MEMO.set(memo)
    try:
        yield
    finally:
        _MEMO.reset(token)
        for key in [k for k in memo if k[0] == "proba"]:
            del memo[key]


def _inputs_token(model) -> str:
    """A digest of what the inputs depend on: the setup (not the labels), feature maps."""
    setup = {k: v for k, v in model.setup.items() if k != "labels_key"}
    digest = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode())
    for j in sorted(model._pca):
        for name, value in sorted(pca_arrays(model._pca[j]).items()):
            digest.update(name.encode() + np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def memo_views(model, adata: AnnData) -> dict[str, np.ndarray]:
    """:func:`spatial_views`, computed once per AnnData and setup inside :func:`reuse_views`."""
    memo = _MEMO.get()
    if memo is None:
        return spatial_views(model, adata)
    key = ("views", id(adata), _inputs_token(model))
    if key not in memo:  # the AnnData is kept with them, so that its id is not reused
        memo[key] = (adata, spatial_views(model, adata))
    return memo[key][1]  # the same dict: its probabilities are reused too


def memo_proba(model, views: dict, calibrated: bool, compute: Callable[[], np.ndarray]):
    """``compute()``, the probabilities of ``views``, once per model inside :func:`reuse_views`."""
    memo = _MEMO.get()
    if memo is None:
        return compute()
    key = ("proba", id(model), id(views), calibrated)
    if key not in memo:  # the views are kept with them, so that their id is not reused
        memo[key] = (views, compute())
    return memo[key][1].copy()
