"""Align a query AnnData's genes to the gene list a source model was trained on."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._errors import ScResidualError

logger = logging.getLogger("scresidual")

MIN_GENE_OVERLAP = 0.1
"""Default smallest fraction of the model's genes that must be present in the query."""


def gene_overlap(query_genes: Sequence[str], model_genes: Sequence[str]) -> float:
    """Fraction of ``model_genes`` found in ``query_genes``."""
    model = pd.Index(model_genes)
    return float(model.isin(pd.Index(query_genes)).mean()) if len(model) else 0.0


def align_genes(
    adata: AnnData,
    model_genes: Sequence[str],
    *,
    layer: str | None = None,
    min_overlap: float = MIN_GENE_OVERLAP,
    model_name: str = "source model",
) -> sp.csr_matrix:
    """Return ``adata``'s expression re-ordered to ``model_genes``, zero-filling missing genes.

    Parameters
    ----------
    adata
        Query data; ``var_names`` are matched exactly to ``model_genes``.
    model_genes
        Gene names in the order the model expects.
    layer
        Layer to read instead of ``X``.
    min_overlap
        Smallest fraction of ``model_genes`` that must be present.
    model_name
        Used in messages.

    Returns
    -------
    A CSR matrix of shape ``(n_obs, len(model_genes))``.

    """
    if adata.var_names.has_duplicates:
        raise ScResidualError(
            "adata.var_names has duplicate gene names; call adata.var_names_make_unique() first."
        )
    model = pd.Index(model_genes)
    position = pd.Index(adata.var_names).get_indexer(model)
    present = position >= 0
    frac = float(present.mean()) if len(model) else 0.0
    logger.info(
        "%s: %d of %d model genes found in the query (%.1f%%); missing genes are zero-filled.",
        model_name, int(present.sum()), len(model), 100 * frac,
    )
    if frac < min_overlap:
        example = ", ".join(map(str, model[:3]))
        raise ScResidualError(
            f"only {present.sum()} of {len(model)} genes of the {model_name} are in adata.var_names "
            f"({100 * frac:.1f}% < {100 * min_overlap:.0f}%); use the same gene identifiers as the "
            f"model (e.g. {example}) or lower min_overlap."
        )
    X = adata.layers[layer] if layer is not None else adata.X
    X = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
    # Select present columns, then scatter them into the model's order.
    cols = position[present]
    taken = X[:, cols].tocoo()
    target = np.flatnonzero(present)[taken.col]
    return sp.csr_matrix(
        (taken.data, (taken.row, target)), shape=(adata.n_obs, len(model)), dtype=np.float32
    )
