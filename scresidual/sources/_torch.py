"""Generic frozen sources: any torch module or callable, or a precomputed ``obsm`` embedding.

Also holds the helpers the model-specific adapters (scGPT, Geneformer) share: device parsing,
freezing, batching with a progress bar and gene matching by identifier.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from .._docs import doc_layer, doc_min_overlap_model, doc_params
from .._errors import ScResidualError
from .._genes import MIN_GENE_OVERLAP, align_genes
from .._logging import tqdm
from .._normalise import log1p_normalise
from ._base import FrozenSource

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shared helpers
def _as_device(device: str | torch.device) -> torch.device:
    """Parse ``device``, raising :class:`ScResidualError` for unknown or unavailable devices."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ScResidualError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScResidualError(f"device {device!r} requested but CUDA is not available; use 'cpu'.")
    return dev


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Put ``module`` in eval mode and switch off gradients of all its parameters."""
    module.eval()
    module.requires_grad_(False)
    return module


def _batches(n: int, batch_size: int, *, progress: bool | None, desc: str) -> Iterator[slice]:
    """Yield row slices of ``batch_size`` while advancing a tqdm bar counted in cells."""
    if int(batch_size) < 1:
        raise ScResidualError(f"batch_size must be a positive integer, got {batch_size}.")
    batch_size = int(batch_size)
    with tqdm(total=n, desc=desc, unit="cell", progress=progress) as bar:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield slice(start, stop)
            bar.update(stop - start)


def _matrix(adata: AnnData, layer: str | None) -> sp.csr_matrix:
    """``adata.X`` or ``adata.layers[layer]`` as a float32 CSR matrix."""
    if layer is not None and layer not in adata.layers:
        available = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise ScResidualError(
            f"layer {layer!r} is not in adata.layers (available: {available}); "
            "pass layer=None to use adata.X."
        )
    X = adata.layers[layer] if layer is not None else adata.X
    if X is None:
        raise ScResidualError(
            "adata.X is empty; pass layer= naming a layer with expression values."
        )
    X = X.tocsr() if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    X = X.astype(np.float32, copy=False)
    if X.nnz and not np.isfinite(X.data).all():
        raise ScResidualError(
            "the expression matrix contains NaN/inf; fix or drop those cells first."
        )
    return X


def _gene_ids(adata: AnnData, gene_col: str | None, *, what: str) -> pd.Index:
    """Gene identifiers of ``adata``: ``var_names`` or the ``adata.var[gene_col]`` column."""
    if gene_col is None or gene_col == "index":
        return pd.Index(adata.var_names.astype(str))
    if gene_col not in adata.var.columns:
        available = ", ".join(map(repr, adata.var.columns[:10])) or "none"
        raise ScResidualError(
            f"gene_col {gene_col!r} is not a column of adata.var (available: {available}); "
            f"pass the column holding {what} or gene_col=None to use var_names."
        )
    return pd.Index(adata.var[gene_col].astype(str))


def _match_genes(
    X: sp.csr_matrix,
    query_genes: pd.Index,
    vocab: dict[str, int],
    *,
    min_overlap: float,
    model_name: str,
    what: str,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Keep the query genes found in ``vocab``; return their expression and token ids.

    Query genes that map to the same token are summed (as Geneformer's ``collapse_gene_ids``).
    Columns keep the query's gene order. Overlap is the fraction of the *query's* genes found
    in the model vocabulary (foundation-model vocabularies are much larger than any one data
    set), as scGPT's ``embed_data`` reports it.
    """
    tokens = np.fromiter(
        (vocab.get(g, -1) for g in query_genes), dtype=np.int64, count=len(query_genes)
    )
    present = tokens >= 0
    n_match = int(present.sum())
    frac = n_match / len(query_genes) if len(query_genes) else 0.0
    logger.info(
        "%s: %d of %d query genes found in the model vocabulary of %d genes (%.1f%%).",
        model_name,
        n_match,
        len(query_genes),
        len(vocab),
        100 * frac,
    )
    if n_match == 0 or frac < min_overlap:
        example = ", ".join(list(vocab)[:3])
        raise ScResidualError(
            f"only {n_match} of {len(query_genes)} genes of adata are in the {model_name} "
            f"vocabulary ({100 * frac:.1f}% < {100 * min_overlap:.0f}%); identify genes by "
            f"{what} (e.g. {example}) via var_names or gene_col=, or lower min_overlap=."
        )
    cols = np.flatnonzero(present)
    X = X[:, cols]
    tokens = tokens[cols]
    uniq, first, inverse = np.unique(tokens, return_index=True, return_inverse=True)
    if len(uniq) < len(tokens):
        logger.info("%s: summing %d duplicated query genes.", model_name, len(tokens) - len(uniq))
        order = np.argsort(first, kind="stable")  # keep first-appearance order
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        collapse = sp.csr_matrix(
            (np.ones(len(tokens), dtype=np.float32), (np.arange(len(tokens)), rank[inverse])),
            shape=(len(tokens), len(uniq)),
        )
        X = (X @ collapse).tocsr()
        tokens = uniq[order]
    return X, tokens


def _to_numpy_2d(out, n: int, what: str) -> np.ndarray:
    """Convert a model output to a float32 ``(n, d)`` array or raise."""
    if isinstance(out, (tuple, list)) and len(out):
        out = out[0]
    if isinstance(out, torch.Tensor):
        out = out.detach().to("cpu", torch.float32).numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != n:
        raise ScResidualError(
            f"{what} returned an array of shape {out.shape} for {n} cells; it must return "
            "(n_cells, n_latent)."
        )
    return out


# --------------------------------------------------------------------------- TorchSource
@doc_params(doc_layer=doc_layer, doc_min_overlap_model=doc_min_overlap_model)
class TorchSource(FrozenSource):
    """Wrap a frozen ``torch.nn.Module`` (or any callable) mapping expression to an embedding.

    The model receives a float32 tensor of shape ``(n_cells, n_genes)`` and must return
    ``(n_cells, n_latent)`` (a tensor, an array, or a tuple whose first element is one).

    Parameters
    ----------
    model
        A ``torch.nn.Module`` or a callable. Modules are put in eval mode and their parameters
        get ``requires_grad=False``; they are moved to ``device``.
    genes
        Gene names the model expects, in order. When given, ``adata`` is aligned to them with
        :func:`~scresidual.sources.align_genes` (missing genes zero-filled); otherwise
        ``adata``'s columns are passed as they are.
    layer
        {doc_layer}
    transform
        ``None`` (values as stored), ``"log1p"`` (per-cell total-count normalisation to 1e4
        then ``log1p``) or a callable taking and returning a float32 array
        ``(n_cells, n_genes)``, applied per batch before the model.
    n_latent
        Embedding width; inferred from a forward pass on zeros when ``genes`` is given.
    device
        Torch device for the forward passes.
    name
        Name used in messages.
    min_overlap
        {doc_min_overlap_model}

    """

    def __init__(
        self,
        model: torch.nn.Module | Callable,
        *,
        genes: Sequence[str] | None = None,
        layer: str | None = None,
        transform: str | Callable[[np.ndarray], np.ndarray] | None = None,
        n_latent: int | None = None,
        device: str | torch.device = "cpu",
        name: str = "torch model",
        min_overlap: float = MIN_GENE_OVERLAP,
    ) -> None:
        if not callable(model):
            raise ScResidualError(
                f"model must be a torch.nn.Module or a callable, got {type(model).__name__}."
            )
        if transform is not None and not callable(transform) and transform != "log1p":
            raise ScResidualError(
                f"unknown transform {transform!r}; use None, 'log1p' or a callable."
            )
        self.device = _as_device(device)
        if isinstance(model, torch.nn.Module):
            model = _freeze(model.to(self.device))
        self.model = model
        self.genes = None if genes is None else [str(g) for g in genes]
        self.layer = layer
        self.transform = transform
        self.name = name
        self.min_overlap = min_overlap
        self._n_latent = None if n_latent is None else int(n_latent)

    @property
    def n_latent(self) -> int:
        """Width of the embedding (probed with a forward pass when not given)."""
        if self._n_latent is None:
            if self.genes is None:
                raise ScResidualError(
                    f"{self.name}: the embedding width is unknown until the first embed(); "
                    "pass n_latent= or genes= to TorchSource."
                )
            zeros = np.zeros((2, len(self.genes)), dtype=np.float32)
            self._n_latent = self._forward(zeros).shape[1]
        return self._n_latent

    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self.transform == "log1p":
            x = log1p_normalise(x)
        elif callable(self.transform):
            x = np.asarray(self.transform(x), dtype=np.float32)
        with torch.no_grad():
            out = self.model(torch.as_tensor(x, dtype=torch.float32, device=self.device))
        return _to_numpy_2d(out, x.shape[0], self.name)

    def embed(
        self, adata: AnnData, *, batch_size: int = 1024, progress: bool | None = None
    ) -> np.ndarray:
        """Embed every cell of ``adata``; returns float32 ``(n_obs, n_latent)``."""
        if self.genes is not None:
            X = align_genes(
                adata,
                self.genes,
                layer=self.layer,
                min_overlap=self.min_overlap,
                model_name=self.name,
            )
        else:
            X = _matrix(adata, self.layer)
        parts = []
        for rows in _batches(adata.n_obs, batch_size, progress=progress, desc=self.name):
            parts.append(self._forward(X[rows].toarray()))
        width = parts[0].shape[1] if parts else (self._n_latent or 0)
        Z = np.concatenate(parts, axis=0) if parts else np.zeros((0, width), np.float32)
        if self._n_latent is not None and Z.shape[1] != self._n_latent:
            raise ScResidualError(
                f"{self.name} returned {Z.shape[1]} dimensions but n_latent={self._n_latent}; "
                "fix n_latent."
            )
        self._n_latent = Z.shape[1]
        return Z


# --------------------------------------------------------------------------- ObsmSource
class ObsmSource(FrozenSource):
    """A precomputed embedding already stored in ``adata.obsm[key]``.

    Use it for embeddings computed elsewhere (e.g. with the model's own package).

    Parameters
    ----------
    key
        ``obsm`` key holding the embedding.
    n_latent
        Expected width; learnt from the first :meth:`embed` call when not given.
    name
        Name used in messages.

    """

    def __init__(self, key: str, *, n_latent: int | None = None, name: str | None = None) -> None:
        self.key = key
        self.name = name or f"obsm[{key!r}]"
        self._n_latent = None if n_latent is None else int(n_latent)

    @property
    def n_latent(self) -> int:
        """Width of the embedding."""
        if self._n_latent is None:
            raise ScResidualError(
                f"{self.name}: the embedding width is unknown until the first embed(); "
                "pass n_latent= to ObsmSource."
            )
        return self._n_latent

    def embed(
        self, adata: AnnData, *, batch_size: int = 1024, progress: bool | None = None
    ) -> np.ndarray:
        """Return ``adata.obsm[key]`` as float32 ``(n_obs, n_latent)``."""
        if self.key not in adata.obsm:
            available = ", ".join(map(repr, adata.obsm.keys())) or "none"
            raise ScResidualError(
                f"adata.obsm has no key {self.key!r} (available: {available}); compute the "
                "embedding first or pass the right key."
            )
        Z = adata.obsm[self.key]
        if isinstance(Z, pd.DataFrame):
            Z = Z.to_numpy()
        Z = Z.toarray() if sp.issparse(Z) else np.asarray(Z)
        try:
            Z = Z.astype(np.float32)
        except (TypeError, ValueError) as err:
            raise ScResidualError(
                f"adata.obsm[{self.key!r}] is not numeric; store a float matrix there."
            ) from err
        if Z.ndim != 2:
            raise ScResidualError(
                f"adata.obsm[{self.key!r}] has shape {Z.shape}; it must be (n_obs, n_latent)."
            )
        if not np.isfinite(Z).all():
            n_bad = int((~np.isfinite(Z)).any(axis=1).sum())
            raise ScResidualError(
                f"adata.obsm[{self.key!r}] has NaN/inf in {n_bad} cells; recompute it or drop "
                "those cells."
            )
        if self._n_latent is not None and Z.shape[1] != self._n_latent:
            raise ScResidualError(
                f"adata.obsm[{self.key!r}] has {Z.shape[1]} columns but n_latent="
                f"{self._n_latent}; use the matching embedding."
            )
        self._n_latent = Z.shape[1]
        return Z
