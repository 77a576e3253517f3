"""10x Xenium output folder loader."""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import SPATIAL_KEY
from .._errors import ScResidualError
from ._common import (
    as_path,
    decode,
    finalize_counts,
    first_existing,
    numeric_coordinates,
    read_frame,
    require_columns,
    require_dir,
)
from ._tenx import check_unique_barcodes, read_count_matrix, split_gene_expression, to_anndata

CELL_FILES = ["cells.parquet", "cells.csv.gz", "cells.csv"]
CELL_COLUMNS = ["cell_id", "x_centroid", "y_centroid"]

CONTROL_COLUMNS = {
    "Negative Control Probe": "control_probe_counts",
    "Negative Control Codeword": "control_codeword_counts",
    "Blank Codeword": "control_codeword_counts",
    "Unassigned Codeword": "unassigned_codeword_counts",
    "Deprecated Codeword": "deprecated_codeword_counts",
    "Genomic Control": "genomic_control_counts",
}
"""``obs`` column receiving the per-cell total of each non-gene Xenium feature type."""


def _control_column(feature_type: str) -> str:
    if feature_type in CONTROL_COLUMNS:
        return CONTROL_COLUMNS[feature_type]
    slug = re.sub(r"[^0-9a-z]+", "_", feature_type.lower()).strip("_") or "other"
    return f"{slug}_counts"


def xenium(path: str | os.PathLike) -> AnnData:
    """Read a 10x Xenium output folder.

    Parameters
    ----------
    path
        The Xenium output folder, holding ``cell_feature_matrix.h5`` (or the MEX folder
        ``cell_feature_matrix/``) and ``cells.parquet`` (or ``cells.csv.gz``).

    Returns
    -------
    AnnData of the cells in the count matrix with

    - ``X`` and ``layers['counts']``: 'Gene Expression' counts, float32 CSR;
    - ``var_names``: gene symbols made unique, ``var['gene_ids']``, ``var['feature_types']``;
    - ``obsm['spatial']``: (``x_centroid``, ``y_centroid``) in microns;
    - ``obs``: the other columns of the cells table, plus per-cell totals of the dropped control
      features from the matrix (``control_probe_counts``, ``control_codeword_counts``, and one
      ``<type>_counts`` column per other non-gene feature type present). These totals replace
      cells-table columns of the same name.

    Every cell of the matrix must have a row in the cells table; extra rows are ignored.
    Input files are only read.

    """
    folder = require_dir(
        as_path(path, "path"), "Xenium output folder",
        "pass the folder that holds cell_feature_matrix.h5 and cells.parquet",
    )
    cells_file = first_existing(folder, CELL_FILES)
    if cells_file is None:
        raise ScResidualError(
            f"no cells.parquet or cells.csv.gz in {folder}; copy the cells table from the "
            "Xenium output."
        )
    matrix = read_count_matrix(
        folder, "cell_feature_matrix.h5", "copy it from the Xenium output"
    )
    check_unique_barcodes(matrix.barcodes, matrix.source)
    gex, other = split_gene_expression(matrix)

    cells = read_frame(cells_file, "Xenium cells table", dtype={"cell_id": str})
    require_columns(
        cells, CELL_COLUMNS, "Xenium cells table", cells_file,
        "use the cells table written by the Xenium instrument",
    )
    ids = pd.Index(decode(cells["cell_id"].to_numpy()), dtype=object)
    if ids.has_duplicates:
        dup = ids[ids.duplicated()][0]
        raise ScResidualError(
            f"duplicate cell_id in {cells_file.name} (e.g. {dup!r}); use the cells table "
            "written by the Xenium instrument."
        )
    cells = cells.drop(columns="cell_id")
    cells.index = ids
    barcodes = pd.Index(gex.barcodes, dtype=object).astype(str)
    missing = ~barcodes.isin(ids)
    if missing.any():
        raise ScResidualError(
            f"{int(missing.sum())} of {len(barcodes)} cell ids in {matrix.source.name} have no "
            f"row in {cells_file.name} (e.g. {barcodes[missing][0]!r}); use the cells table and "
            "count matrix from the same Xenium run."
        )
    cells = cells.loc[barcodes]
    cells.index.name = None
    xy = numeric_coordinates(cells, CELL_COLUMNS[1:], f"Xenium cells table {cells_file.name}")

    adata = to_anndata(gex)
    obs = cells.drop(columns=CELL_COLUMNS[1:])
    obs.index = adata.obs_names
    for col in obs.columns:
        if obs[col].dtype == object and len(obs) and isinstance(obs[col].iloc[0], bytes):
            obs[col] = decode(obs[col].to_numpy())
    totals: dict[str, np.ndarray] = {
        "control_probe_counts": np.zeros(adata.n_obs),
        "control_codeword_counts": np.zeros(adata.n_obs),
    }
    for feature_type in sorted(set(map(str, other.types))):
        sub = other.subset(np.asarray(other.types == feature_type, dtype=bool))
        col = _control_column(feature_type)
        totals.setdefault(col, np.zeros(adata.n_obs))
        totals[col] = totals[col] + np.asarray(sub.X.sum(axis=1), dtype=np.float64).ravel()
    for col, values in totals.items():
        obs[col] = values
    adata.obs = obs
    adata.obsm[SPATIAL_KEY] = xy
    return finalize_counts(adata)
