"""Input checks that fail early with a one-line message naming the problem and the fix."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ._constants import SPATIAL_KEY
from ._errors import ScResidualError

logger = logging.getLogger(__name__)


def _values(X) -> np.ndarray:
    """The stored values of a dense or sparse matrix (no densifying)."""
    return X.data if sp.issparse(X) else np.asarray(X)


def check_obs_key(adata: AnnData, key: str) -> None:
    """Raise if ``key`` is not a column of ``adata.obs``."""
    if key not in adata.obs:
        cols = ", ".join(map(str, list(adata.obs.columns)[:8])) or "none"
        raise ScResidualError(f"obs key {key!r} not found; available obs columns: {cols}.")


def check_obsm_key(adata: AnnData, key: str) -> None:
    """Raise if ``key`` is not in ``adata.obsm``."""
    if key not in adata.obsm:
        keys = ", ".join(map(str, adata.obsm.keys())) or "none"
        raise ScResidualError(f"obsm key {key!r} not found; available obsm keys: {keys}.")


def check_finite(X, what: str) -> None:
    """Raise if ``X`` holds NaN or inf."""
    vals = _values(X)
    if vals.dtype.kind in "fc" and not np.isfinite(vals).all():
        n_bad = int((~np.isfinite(vals)).sum())
        raise ScResidualError(f"{what} holds {n_bad} NaN/inf values; remove or impute them first.")


def check_counts(X, what: str, *, counts: bool | None = True) -> bool:
    """Whether ``X`` holds counts (finite, whole, non-negative); raise if counts have negatives.

    ``counts=True`` requires counts; ``None`` guesses from the values (scaled data is almost
    never whole numbers); ``False`` (values known not to be counts) checks finiteness only.
    """
    check_finite(X, what)
    vals = _values(X).ravel()
    sample, n_neg = vals[:100_000], int((vals < 0).sum())
    whole = np.isclose(sample, np.round(sample)).mean() if sample.size else 1.0
    if n_neg and (whole > 0.9 if counts is None else counts):
        raise ScResidualError(
            f"{what} has {n_neg} negative value(s) but raw counts are required; fix those "
            "values or pass the raw counts (layer='counts' / --layer counts)."
        )
    return bool(whole == 1 and not n_neg)


def check_unique_obs_names(adata: AnnData) -> None:
    """Raise if cell names repeat."""
    if adata.obs_names.has_duplicates:
        dup = adata.obs_names[adata.obs_names.duplicated()][0]
        raise ScResidualError(
            f"duplicate cell names (e.g. {dup!r}); call adata.obs_names_make_unique() first."
        )


def check_spatial(adata: AnnData, spatial_key: str = SPATIAL_KEY) -> np.ndarray:
    """Return the coordinates in ``obsm[spatial_key]`` after checking them."""
    if spatial_key not in adata.obsm:
        raise ScResidualError(
            f"no spatial coordinates in adata.obsm[{spatial_key!r}]; store an (n_obs, 2) array "
            "of x/y positions there or pass spatial_key=."
        )
    xy = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ScResidualError(
            f"adata.obsm[{spatial_key!r}] has shape {xy.shape}; expected (n_obs, 2) or (n_obs, 3)."
        )
    check_finite(xy, f"adata.obsm[{spatial_key!r}]")
    return xy


PLACEHOLDER_LABELS = frozenset({"nan", "none", "<na>"})
"""Label strings that mean "no label" (a NaN written out as text); treated as unlabelled."""


def _per_label(y, test) -> np.ndarray:
    """``test`` of the distinct labels of ``y`` (few), spread back to each cell; False for NaN.

    Testing each of 10^6 labels one by one takes seconds; their distinct values, milliseconds.
    """
    codes, uniques = pd.factorize(np.asarray(y, dtype=object).ravel())
    out = np.zeros(len(codes), dtype=bool)
    known = codes >= 0
    out[known] = test(pd.Series(np.asarray(uniques, dtype=object)))[codes[known]]
    return out


def _placeholders(s: pd.Series) -> np.ndarray:
    text = s[s.map(lambda v: isinstance(v, str))].str.strip().str.lower()
    out = np.zeros(len(s), dtype=bool)
    out[text.index[text.isin(PLACEHOLDER_LABELS)]] = True
    return out


def placeholder_labels(y) -> np.ndarray:
    """True where a label is a placeholder string such as ``"nan"`` (see PLACEHOLDER_LABELS)."""
    return _per_label(y, _placeholders)


def warn_placeholder_labels(y) -> None:
    """Warn (shown even with --quiet) when labels hold placeholder strings like "nan"."""
    n = int(placeholder_labels(y).sum())
    if n:
        logger.warning(
            "%d cell(s) are labelled with a text placeholder (%s); they are treated as "
            "unlabelled: store missing labels as NaN, or rename a class really called so.",
            n,
            "/".join(sorted(PLACEHOLDER_LABELS)),
        )


def check_library_ids(adata: AnnData, key: str) -> None:
    """Raise if ``obs[key]`` is missing or has NaN slide ids (they would pool into one slide)."""
    check_obs_key(adata, key)
    n_bad = int(adata.obs[key].isna().sum())
    if n_bad:
        raise ScResidualError(
            f"obs[{key!r}] has no slide id for {n_bad} cell(s); fill them in (or drop those "
            "cells) so that no unrelated cells are pooled into one slide."
        )


def check_cells(adata: AnnData, minimum: int, purpose: str) -> None:
    """Raise if ``adata`` has fewer than ``minimum`` cells."""
    if adata.n_obs < minimum:
        have = "no cells" if adata.n_obs == 0 else f"only {adata.n_obs} cell(s)"
        raise ScResidualError(
            f"the slide has {have}, but {purpose} needs at least {minimum}; pass a slide "
            "with more cells."
        )


def check_labels(y, n_classes: int | None = None) -> np.ndarray:
    """Integer class codes in ``0 … n_classes - 1`` (default ``max + 1``) or a one-line error."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ScResidualError("labels must be a 1-D array of integer class codes; encode them.")
    k = int(y.max()) + 1 if n_classes is None and len(y) else int(n_classes or 0)
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise ScResidualError(
            f"labels lie in {y.min()}..{y.max()}, outside 0..{k - 1}; re-encode the labels."
        )
    return y.astype(np.int64)


def parse_spec(spec: str, kinds: Sequence[str], what: str) -> tuple[str, str | None]:
    """``'kind:value'`` of an option (``obsm:KEY``, ``scvi:DIR``, ``pca``…) or a one-line error."""
    spec = str(spec)
    kind, _, value = spec.partition(":")
    if kind not in kinds or (kind in ("obsm", "scvi") and not value):
        raise ScResidualError(
            f"unknown {what} {spec!r}; use one of "
            + ", ".join(f"'{k}:…'" if k in ("obsm", "scvi") else f"'{k}'" for k in kinds)
            + "."
        )
    return kind, value or None


GRAPH_SPECS = "'knn:K', 'radius:R', 'delaunay' or 'none'"


def parse_graph(spec: str | None) -> tuple[str, float | None]:
    """Parse ``'knn:6'``, ``'radius:150'``, ``'delaunay'`` or ``'none'`` into (method, value)."""
    m = re.fullmatch(r"(knn|radius)(?::([0-9.]+))?|delaunay|none", str(spec).strip().lower())
    if not m:
        raise ScResidualError(f"unknown graph {spec!r}; use {GRAPH_SPECS}.")
    method, value = m.group(1) or m.group(0), m.group(2)
    if method == "radius" and value is None:
        raise ScResidualError("graph 'radius' needs a distance, e.g. 'radius:150'.")
    value = float(value) if value else (6.0 if method == "knn" else None)
    if method == "knn" and (value < 1 or value != int(value)):
        raise ScResidualError(f"knn needs a positive integer neighbour count, got {value}.")
    return method, value


def labelled_mask(y) -> np.ndarray:
    """True where a label is present (not NaN/None/empty string, nor text such as "nan")."""
    return _per_label(y, lambda s: (s.astype(str).str.strip() != "").to_numpy() & ~_placeholders(s))
