"""Loaders for spatial data: ``.h5ad``, 10x Visium and Xenium output folders, and plain tables.

Every loader returns an :class:`~anndata.AnnData` with coordinates in ``obsm['spatial']`` and
checks its input up front; bad files raise :class:`~scresidual._errors.ScResidualError` with a
one-line message naming the problem and the fix. Input files are never modified.
"""

from __future__ import annotations

from ._h5ad import h5ad
from ._table import table
from ._visium import visium
from ._xenium import xenium

__all__ = ["h5ad", "table", "visium", "xenium"]
