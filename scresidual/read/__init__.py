"""Loaders: ``.h5ad``, 10x Visium and Xenium folders, tables, SpatialData; labels CSVs.

A SpatialData comes as an object or a ``.zarr`` store; one of its tables is read.

Every loader returns an :class:`~anndata.AnnData` with coordinates in ``obsm['spatial']``. The
libraries (anndata, scanpy, pandas, spatialdata) read; what they refuse, and what they accept
silently (missing coordinates, repeated ids, negative counts), raises
:class:`~scresidual._errors.ScResidualError` with a one-line message naming the file, the cause
and the fix. Input files are never modified.
"""

from __future__ import annotations

from ._h5ad import h5ad
from ._labels import labels
from ._table import table
from ._tenx import visium, xenium
from .sdata import spatialdata

__all__ = ["h5ad", "labels", "spatialdata", "table", "visium", "xenium"]
