"""Align a query AnnData's genes to the gene list a source model was trained on."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ._constants import MIN_GENE_OVERLAP
from ._docs import doc_layer, doc_min_overlap_model, doc_params
from ._errors import ScResidualError

logger = logging.getLogger(__name__)

MIN_VOCAB_OVERLAP = 0.1
"""Default smallest fraction of the query's genes found in a foundation model's vocabulary
(scGPT, Geneformer): a different quantity, as their vocabularies dwarf any one data set."""

WARN_GENE_OVERLAP = 0.9
"""Below this fraction of the model's genes present, zero-filling is logged as a WARNING."""


def gene_overlap(query_genes: Sequence[str], model_genes: Sequence[str]) -> float:
    """Fraction of ``model_genes`` found in ``query_genes``."""
    model = pd.Index(model_genes)
    return float(model.isin(pd.Index(query_genes)).mean()) if len(model) else 0.0


def check_gene_overlap(
    query_genes: Sequence[str],
    model_genes: Sequence[str],
    *,
    min_overlap: float = MIN_GENE_OVERLAP,
    model_name: str = "source model",
) -> np.ndarray:
    """Raise unless ``min_overlap`` of ``model_genes`` are in ``query_genes``.

    Returns the position of each model gene in ``query_genes`` (-1 where missing).
    """
    model = pd.Index(model_genes)
    position = pd.Index(query_genes).get_indexer(model)
    present = position >= 0
    frac = float(present.mean()) if len(model) else 0.0
    if frac < min_overlap or not present.any():
        example = ", ".join(map(str, model[:3]))
        raise ScResidualError(
            f"only {present.sum()} of {len(model)} genes of the {model_name} are in "
            f"adata.var_names ({100 * frac:.1f}% < {100 * min_overlap:.0f}%); use the same gene "
            f"identifiers as the model (e.g. {example}) or lower min_overlap=."
        )
    return position


def match_genes(
    adata: AnnData,
    model_genes: Sequence[str],
    *,
    min_overlap: float = MIN_GENE_OVERLAP,
    model_name: str = "source model",
) -> tuple[np.ndarray, np.ndarray]:
    """Check ``adata``'s genes against a model's and log how many will be zero-filled.

    Raises a one-line error for duplicate gene names or below ``min_overlap``; returns the
    position of each model gene in ``adata.var_names`` (-1 where missing) and the mask of
    present ones.
    """
    if adata.var_names.has_duplicates:
        raise ScResidualError(
            "adata.var_names has duplicate gene names; call adata.var_names_make_unique() first."
        )
    position = check_gene_overlap(
        adata.var_names, model_genes, min_overlap=min_overlap, model_name=model_name
    )
    present = position >= 0
    frac = float(present.mean())
    # Logged only once the overlap is known to be usable (never "zero-filled", then an error).
    if frac < WARN_GENE_OVERLAP:  # a WARNING: shown even with --quiet
        logger.warning(
            "only %.0f%% (%d/%d) of the %s's genes are in the slide; missing genes are "
            "zero-filled, which can change predictions a lot: use a slide measuring the "
            "model's genes.",
            100 * frac,
            int(present.sum()),
            len(present),
            model_name,
        )
    else:
        logger.log(
            logging.INFO if frac < 1 else logging.DEBUG,
            "%s: %d of %d model genes found in the query (%.1f%%); missing genes are zero-filled.",
            model_name,
            int(present.sum()),
            len(present),
            100 * frac,
        )
    return position, present


@doc_params(doc_layer=doc_layer, doc_min_overlap_model=doc_min_overlap_model)
def align_genes(
    adata: AnnData,
    model_genes: Sequence[str],
    *,
    layer: str | None = None,
    min_overlap: float = MIN_GENE_OVERLAP,
    model_name: str = "source model",
    chunk_size: int = 50_000,
) -> sp.csr_matrix:
    """Return ``adata``'s expression re-ordered to ``model_genes``, zero-filling missing genes.

    Parameters
    ----------
    adata
        Query data; ``var_names`` are matched exactly to ``model_genes``.
    model_genes
        Gene names in the order the model expects.
    layer
        {doc_layer}
    min_overlap
        {doc_min_overlap_model}
    model_name
        Used in messages.
    chunk_size
        Rows read at a time; with a backed AnnData only the model's genes of the whole
        matrix are held in memory (use :func:`iter_aligned_genes` to hold one block).

    Returns
    -------
    A CSR matrix of shape ``(n_obs, len(model_genes))``.

    """
    position, present = match_genes(
        adata, model_genes, min_overlap=min_overlap, model_name=model_name
    )
    blocks = [block for _, block in _aligned_blocks(adata, position, present, layer, chunk_size)]
    if not blocks:
        return sp.csr_matrix((0, len(position)), dtype=np.float32)
    return blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")


def expression_matrix(adata: AnnData, layer: str | None = None):
    """``adata.X`` or ``adata.layers[layer]`` (possibly an on-disk dataset when backed)."""
    if layer is not None:
        if layer not in adata.layers:
            keys = ", ".join(map(str, adata.layers.keys())) or "none"
            raise ScResidualError(f"layer {layer!r} not found; available layers: {keys}.")
        return adata.layers[layer]
    if adata.X is None:
        raise ScResidualError("adata.X is empty; load an expression matrix or pass layer=.")
    return adata.X


@doc_params(doc_layer=doc_layer)
def iter_row_blocks(
    adata: AnnData, *, layer: str | None = None, chunk_size: int = 50_000
) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Yield ``(start, rows)`` blocks of the expression matrix as float32 CSR, in order.

    Only ``chunk_size`` rows are in memory at a time, which is what makes AnnData opened with
    ``backed="r"`` usable: each block is read from disk on demand.

    Parameters
    ----------
    adata
        Data in memory or backed.
    layer
        {doc_layer}
    chunk_size
        Rows per block.

    """
    X = expression_matrix(adata, layer)
    chunk_size = max(int(chunk_size), 1)
    for start in range(0, adata.n_obs, chunk_size):
        block = X[start : start + chunk_size]
        if sp.issparse(block):
            block = sp.csr_matrix(block, dtype=np.float32)
        else:
            block = sp.csr_matrix(np.asarray(block, dtype=np.float32))
        yield start, block


def _aligned_blocks(adata, position, present, layer, chunk_size):
    cols = position[present]
    target = np.flatnonzero(present)
    n_model = len(position)
    for start, block in iter_row_blocks(adata, layer=layer, chunk_size=chunk_size):
        # Select present columns, then scatter them into the model's order.
        taken = block[:, cols].tocoo()
        yield (
            start,
            sp.csr_matrix(
                (taken.data, (taken.row, target[taken.col])),
                shape=(block.shape[0], n_model),
                dtype=np.float32,
            ),
        )


def iter_aligned_genes(
    adata: AnnData,
    model_genes: Sequence[str],
    *,
    layer: str | None = None,
    min_overlap: float = MIN_GENE_OVERLAP,
    model_name: str = "source model",
    chunk_size: int = 50_000,
) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Like :func:`align_genes`, but yield ``(start, rows)`` blocks of ``chunk_size`` rows.

    Works on backed AnnData without ever holding more than one block of ``X``.
    """
    position, present = match_genes(
        adata, model_genes, min_overlap=min_overlap, model_name=model_name
    )
    yield from _aligned_blocks(adata, position, present, layer, chunk_size)
