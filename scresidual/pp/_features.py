"""Target-side features: log-normalised expression reduced by PCA, reproducible on new slides."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from sklearn.decomposition import PCA
from sklearn.utils.sparsefuncs import mean_variance_axis

from .._constants import MIN_GENE_OVERLAP
from .._errors import ScResidualError
from .._genes import expression_matrix, iter_aligned_genes
from .._normalise import log1p_normalise
from .._validate import check_cells, check_finite


def _check_counts(X, counts: bool | None = None) -> bool:
    """Whether ``X`` holds counts (whole, non-negative); refuses counts with negative values.

    ``counts=None`` guesses from the values (scaled data is almost never whole numbers);
    otherwise ``counts`` says whether the PCA was fitted on counts.
    """
    vals = X.data if sp.issparse(X) else np.asarray(X).ravel()
    sample, n_neg = vals[:100_000], int((vals < 0).sum())
    whole = np.isclose(sample, np.round(sample)).mean() if sample.size else 1.0
    if n_neg and (whole > 0.9 if counts is None else counts):
        raise ScResidualError(
            f"the expression matrix has {n_neg} negative value(s) but PCA features are "
            "computed from counts: fix those values or pass the raw counts (--layer / layer=)."
        )
    return bool(whole == 1 and not n_neg)


@dataclass
class PCAFeatures:
    """Fitted PCA of log-normalised expression, applied identically to any slide.

    Counts (non-negative integers) are normalised to 10,000 per cell and log1p-transformed;
    other values (already normalised, protein scores) are used as they are. The genes, their
    means and the components are stored so new slides get exactly the same map.
    """

    genes: np.ndarray
    mean: np.ndarray
    components: np.ndarray
    lognorm: bool

    @classmethod
    def fit(
        cls,
        adata: AnnData,
        *,
        n_comps: int = 30,
        n_top_genes: int = 2000,
        layer: str | None = None,
        max_cells: int = 50_000,
        seed: int = 0,
    ) -> PCAFeatures:
        """Fit on ``adata`` (a random subset of ``max_cells`` for large slides).

        ``adata`` may be opened backed: only the sampled rows are read into memory.
        """
        check_cells(adata, 2, "fitting PCA features")
        rng = np.random.default_rng(seed)
        big = adata.n_obs > max_cells
        rows = np.sort(rng.choice(adata.n_obs, max_cells, replace=False)) if big else slice(None)
        X = sp.csr_matrix(expression_matrix(adata[rows], layer), dtype=np.float32)
        check_finite(X, "the expression matrix")
        lognorm = _check_counts(X)
        Y = log1p_normalise(X) if lognorm else X
        # Genes ranked by variance (not scanpy's binned dispersion), as fitted models expect.
        var = mean_variance_axis(Y, 0)[1]
        keep = np.sort(np.argsort(-var, kind="stable")[: min(n_top_genes, len(var))])
        keep = keep[var[keep] > 0]
        if len(keep) < 2:
            raise ScResidualError(
                "fewer than 2 features vary across cells; PCA features need a non-constant matrix."
            )
        # scanpy's sparse PCA: ARPACK with implicit centring (no dense copy); sklearn flips
        # signs so each component's largest loading is positive, whatever the solver.
        n_comps = int(min(n_comps, len(keep) - 1, Y.shape[0] - 1))
        pca = PCA(n_comps, svd_solver="arpack", random_state=seed)
        pca.fit(Y[:, keep].astype(np.float64))
        return cls(
            genes=np.asarray(adata.var_names[keep], dtype=object),
            mean=pca.mean_.astype(np.float32),
            components=pca.components_.astype(np.float32),
            lognorm=lognorm,
        )

    def transform(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        min_overlap: float = MIN_GENE_OVERLAP,
        chunk_size: int = 50_000,
    ) -> np.ndarray:
        """Project ``adata`` (genes matched by name, missing ones zero-filled).

        Raises if fewer than ``min_overlap`` of the PCA's genes are in ``adata``. Reads
        ``chunk_size`` rows at a time (``adata`` may be opened backed); memory beyond the
        output is one block.
        """
        out = np.empty((adata.n_obs, len(self.components)), dtype=np.float32)
        offset = self.mean @ self.components.T
        blocks = iter_aligned_genes(
            adata,
            self.genes,
            layer=layer,
            min_overlap=min_overlap,
            model_name="PCA features",
            chunk_size=chunk_size,
        )
        for start, block in blocks:
            check_finite(block, "the expression matrix")
            _check_counts(block, self.lognorm)
            # Totals over the model's genes (fit used all genes'; fitted models expect both).
            block = log1p_normalise(block) if self.lognorm else block
            out[start : start + block.shape[0]] = block @ self.components.T - offset
        return out


def pca_features(
    adata: AnnData,
    *,
    n_comps: int = 30,
    layer: str | None = None,
    key_added: str = "X_pca",
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Log-normalise (counts only) and PCA-reduce expression into ``obsm[key_added]``."""
    pca = PCAFeatures.fit(adata, n_comps=n_comps, layer=layer, seed=seed)
    Z = pca.transform(adata, layer=layer)
    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = Z
    return adata if copy else None
