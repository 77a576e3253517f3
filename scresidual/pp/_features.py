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
from .._validate import check_cells, check_counts
from ._graph import at_most_one_edge


@dataclass
class PCAFeatures:
    """Fitted PCA of log-normalised expression, applied identically to any slide.

    Counts are normalised to 10,000 per cell and log1p-transformed; other values (normalised
    data, protein scores) are used as they are. New slides get exactly the same map.
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
        neighbours: sp.spmatrix | None = None,
    ) -> PCAFeatures:
        """Fit on ``adata``, or on ``max_cells`` random cells (only those are read if backed).

        ``neighbours``: a spatial graph of ``adata``'s cells. The genes and components are
        then those of each cell's mean with its neighbours (as BANKSY's PCA reads the
        neighbourhood): directions along which regions differ, which the cell-to-cell noise
        of single cells can hide. New cells are still projected one by one.
        """
        check_cells(adata, 2, "fitting PCA features")
        rng = np.random.default_rng(seed)
        big = adata.n_obs > max_cells
        rows = np.sort(rng.choice(adata.n_obs, max_cells, replace=False)) if big else slice(None)
        if neighbours is not None:  # every cell is read: the sampled ones' neighbours too
            if adata.isbacked:
                raise ScResidualError(
                    "a neighbourhood PCA averages each cell with its neighbours; load the slide "
                    "into memory (not backed) or use 'pca'."
                )
            X = sp.csr_matrix(expression_matrix(adata, layer), dtype=np.float32)
        else:
            X = sp.csr_matrix(expression_matrix(adata[rows], layer), dtype=np.float32)
        lognorm = check_counts(X, "the expression matrix", counts=None)
        Y = log1p_normalise(X) if lognorm else X
        if neighbours is not None:
            Y = sp.csr_matrix(neighbour_means(neighbours) @ Y)[rows]
        # Genes ranked by variance (not scanpy's binned dispersion), as fitted models expect.
        var = mean_variance_axis(Y, 0)[1]
        keep = np.sort(np.argsort(-var, kind="stable")[:n_top_genes])
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
        genes = np.asarray(adata.var_names[keep], dtype=object)
        return cls(genes, pca.mean_.astype(np.float32), pca.components_.astype(np.float32), lognorm)

    def transform(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        min_overlap: float = MIN_GENE_OVERLAP,
        chunk_size: int = 50_000,
    ) -> np.ndarray:
        """Project ``adata``; genes are matched by name and missing ones zero-filled.

        Raises if under ``min_overlap`` of the map's genes are present; reads ``chunk_size``
        rows at a time, so ``adata`` may be opened backed.
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
            check_counts(block, "the expression matrix", counts=self.lognorm)
            # Totals over the model's genes (fit used all genes'; fitted models expect both).
            block = log1p_normalise(block) if self.lognorm else block
            out[start : start + block.shape[0]] = block @ self.components.T - offset
        return out


def neighbour_means(conn: sp.spmatrix) -> sp.csr_matrix:
    """The operator that averages each cell with its graph neighbours (rows sum to 1)."""
    A = at_most_one_edge(conn).astype(np.float32)
    return sp.csr_matrix(sp.diags(1.0 / np.asarray(A.sum(1)).ravel()) @ A)
