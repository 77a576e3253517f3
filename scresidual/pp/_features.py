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
from .._genes import iter_aligned_genes, iter_row_blocks
from .._normalise import log1p_normalise
from .._validate import check_cells, check_finite


def _is_counts(X) -> bool:
    """Whether ``X`` holds counts; counts with some negative values are refused, not guessed."""
    vals = X.data if sp.issparse(X) else np.asarray(X).ravel()
    sample = vals[:100_000]
    if sample.size == 0:
        return True
    whole = np.isclose(sample, np.round(sample))
    if sample.min() >= 0:
        return bool(whole.all())
    if whole.mean() > 0.9:  # scaled data is almost never whole numbers
        _refuse_negative_counts(int((vals < 0).sum()), "looks like counts but")
    return False


def _refuse_negative_counts(n_neg: int, what: str) -> None:
    raise ScResidualError(
        f"the expression matrix {what} has {n_neg} negative value(s); PCA features need "
        "non-negative counts: fix those values or pass the raw counts (--layer / layer=)."
    )


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
        chunk_size: int = 50_000,
    ) -> PCAFeatures:
        """Fit on ``adata`` (a random subset of ``max_cells`` for large slides).

        ``X`` is read ``chunk_size`` rows at a time, so ``adata`` may be opened backed; only
        the sampled rows are kept in memory.
        """
        check_cells(adata, 2, "fitting PCA features")
        rng = np.random.default_rng(seed)
        rows = (
            np.sort(rng.choice(adata.n_obs, max_cells, replace=False))
            if (adata.n_obs > max_cells)
            else np.arange(adata.n_obs)
        )
        # Read X in row blocks (backed AnnData never loads whole); keep only the sampled rows.
        lognorm, sample = None, []
        for start, block in iter_row_blocks(adata, layer=layer, chunk_size=chunk_size):
            check_finite(block, "the expression matrix")
            if lognorm is None:
                lognorm = _is_counts(block)
            elif lognorm and block.nnz and block.data.min() < 0:
                _refuse_negative_counts(int((block.data < 0).sum()), "holds counts but")
            lo, hi = np.searchsorted(rows, [start, start + block.shape[0]])
            sample.append(block[rows[lo:hi] - start])
        X = sp.vstack(sample, format="csr") if len(sample) > 1 else sample[0]
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
            if self.lognorm and block.nnz and block.data.min() < 0:
                _refuse_negative_counts(
                    int((block.data < 0).sum()), "of the slide (the model was fitted on counts)"
                )
            # Normalise by totals over the model's genes, the same at fit and transform time.
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
