"""Real immune-cell expression profiles from scanpy's bundled ``pbmc68k_reduced`` data set."""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import anndata
import numpy as np
import scipy.sparse as sp
from anndata import AnnData

SOURCE = "scanpy.datasets.pbmc68k_reduced (10x PBMC 68k subset, 700 cells x 765 genes, .raw)"
"""Where the expression profiles come from (bundled with scanpy, no download)."""

PLASMA = "plasma-like B"
"""Derived cell type: real B cells with an antibody-secretion programme added."""

PLASMA_GENES = {"IGJ": 0.45, "MZB1": 0.2, "IGLL5": 0.2, "TNFRSF17": 0.15}
"""Genes (and their share) of the programme added to B cells to make plasma-like cells."""

PLASMA_SHARE = 0.25
"""Fraction of a plasma-like cell's transcripts taken by :data:`PLASMA_GENES`."""

CELL_TYPES = (
    "CD19+ B",
    PLASMA,
    "CD4+/CD45RA+/CD25- Naive T",
    "CD4+/CD25 T Reg",
    "CD4+/CD45RO+ Memory",
    "CD8+/CD45RA+ Naive Cytotoxic",
    "CD8+ Cytotoxic T",
    "CD56+ NK",
    "CD14+ Monocyte",
    "Dendritic",
    "CD34+",
)
"""Cell types of the simulation: the ten ``bulk_labels`` of the source plus plasma-like B."""

UMIS_PER_CELL = {
    "CD19+ B": 250.0,
    PLASMA: 700.0,
    "CD4+/CD45RA+/CD25- Naive T": 230.0,
    "CD4+/CD25 T Reg": 250.0,
    "CD4+/CD45RO+ Memory": 250.0,
    "CD8+/CD45RA+ Naive Cytotoxic": 230.0,
    "CD8+ Cytotoxic T": 260.0,
    "CD56+ NK": 280.0,
    "CD14+ Monocyte": 450.0,
    "Dendritic": 450.0,
    "CD34+": 350.0,
}
"""Mean UMIs one cell contributes to a Visium spot (cell size and RNA content differ by type)."""


@dataclass(frozen=True)
class Profiles:
    """Per-cell expression profiles of real cells, grouped by cell type.

    Attributes
    ----------
    var_names
        Gene symbols, shape ``(n_genes,)``.
    matrix
        Row-normalised expression fractions, shape ``(n_profiles, n_genes)``; each row is
        one real cell (plasma-like rows are modified B cells).
    type_of
        Index into :data:`CELL_TYPES` of each row, shape ``(n_profiles,)``.
    pools
        For each cell type, the row indices of its real cells.

    """

    var_names: np.ndarray
    matrix: np.ndarray
    type_of: np.ndarray
    pools: tuple[np.ndarray, ...]

    def mean_profiles(self) -> np.ndarray:
        """Per-type mean expression fractions, shape ``(n_types, n_genes)``."""
        return np.stack([self.matrix[p].mean(0) for p in self.pools])

    def sample(self, types: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Row index of a random real cell of each requested type (resampling with replacement)."""
        sizes = np.array([len(p) for p in self.pools])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        flat = np.concatenate(self.pools)
        pick = starts[types] + np.floor(rng.random(len(types)) * sizes[types]).astype(np.int64)
        return flat[pick]


def _read_pbmc68k_reduced() -> AnnData:
    """The file behind ``sc.datasets.pbmc68k_reduced()``, read without importing scanpy (slow)."""
    spec = importlib.util.find_spec("scanpy")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"
        if path.is_file():
            with warnings.catch_warnings():  # old file layout: format warnings, not ours to fix
                warnings.simplefilter("ignore")
                return anndata.read_h5ad(path)
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


def load_profiles() -> Profiles:
    """Build :class:`Profiles` from ``pbmc68k_reduced`` (bundled with scanpy, offline).

    ``.raw`` holds log-normalised values; ``expm1`` gives per-cell normalised expression,
    which is rescaled to fractions summing to one per cell.
    """
    pbmc = _read_pbmc68k_reduced()
    raw = pbmc.raw.X
    expr = np.expm1(raw.toarray() if sp.issparse(raw) else np.asarray(raw)).astype(np.float64)
    expr /= expr.sum(1, keepdims=True)
    genes = np.asarray(pbmc.raw.var_names, dtype=str)
    labels = np.asarray(pbmc.obs["bulk_labels"].astype(str))

    programme = np.zeros(len(genes))
    for gene, share in PLASMA_GENES.items():
        programme[np.flatnonzero(genes == gene)] = share
    programme /= programme.sum()
    b_rows = expr[labels == "CD19+ B"]
    plasma = (1.0 - PLASMA_SHARE) * b_rows + PLASMA_SHARE * programme

    matrix = np.vstack([expr, plasma])
    names = np.concatenate([labels, np.full(len(plasma), PLASMA)])
    type_of = np.array([CELL_TYPES.index(n) for n in names])
    pools = tuple(np.flatnonzero(type_of == t) for t in range(len(CELL_TYPES)))
    return Profiles(var_names=genes, matrix=matrix, type_of=type_of, pools=pools)


def sample_counts(mean: np.ndarray, rng: np.random.Generator, *, dispersion: float) -> np.ndarray:
    """Negative-binomial counts (Gamma-Poisson) with the given means and dispersion."""
    if dispersion > 0:
        shape = 1.0 / dispersion
        mean = mean * rng.gamma(shape, 1.0 / shape, size=mean.shape)
    return rng.poisson(mean)
