"""Generic loader: a cells x genes counts table plus a table of cell coordinates."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from anndata.utils import make_index_unique

from .._constants import SPATIAL_KEY
from ._common import coordinate_array, finalize_counts, read_frame, reading, text_index


def table(
    counts: str | os.PathLike,
    coordinates: str | os.PathLike,
    *,
    cell_id_column: str | None = None,
    x: str = "x",
    y: str = "y",
    sep: str | None = None,
) -> AnnData:
    """Read a cells x genes counts table and a coordinates table into one AnnData.

    Parameters
    ----------
    counts
        CSV/TSV (optionally gzipped) or Parquet table, one row per cell; the cell-id column
        (``cell_id_column``, else the first column) plus one numeric column per gene.
    coordinates
        CSV/TSV or Parquet table with a cell-id column and the ``x`` and ``y`` columns. The
        id column is ``cell_id_column`` when present, else the counts table's id column name when
        present, else the first column. Other columns are kept in ``obs``.
    cell_id_column
        Name of the cell-id column.
    x, y
        Coordinate column names in ``coordinates``.
    sep
        Separator of text tables; ``None`` infers it from the suffix (``.tsv``/``.txt`` -> tab,
        else comma).

    Returns
    -------
    AnnData with counts in ``X`` and ``layers['counts']`` (float32 CSR) and the coordinates in
    ``obsm['spatial']``, in the row order of the counts table. Every counts cell must have
    coordinates; extra coordinate rows are ignored. Input files are only read.

    """
    counts, coordinates = Path(counts).expanduser(), Path(coordinates).expanduser()
    fix = "pass one row per cell: the cell id (cell_id_column=) and raw counts, one column per gene"
    with reading("counts table", counts, fix):
        genes = read_frame(counts, sep=sep)
        id_col = cell_id_column or genes.columns[0]
        ids = text_index(genes.pop(id_col))
        values = genes.to_numpy(dtype=np.float64)
    fix_xy = f"pass a table with a cell-id column and the columns {x!r}, {y!r} (x=, y=)"
    with reading("coordinates table", coordinates, fix_xy):
        cdf = read_frame(coordinates, sep=sep)
        others = cdf.columns.drop([x, y])
        cdf.index = text_index(cdf.pop(id_col if id_col in others else others[0]))
        cdf = cdf.reindex(ids)
        xy = coordinate_array(
            cdf,
            [x, y],
            f"coordinates table {coordinates.name}",
            "use tables of the same cells, or check cell_id_column=",
        )
    adata = AnnData(
        X=sp.csr_matrix(values),
        obs=cdf.drop(columns=[x, y]),
        var=pd.DataFrame(index=make_index_unique(pd.Index(genes.columns.astype(str)))),
        obsm={SPATIAL_KEY: xy},
    )
    return finalize_counts(adata, counts.name, fix)
