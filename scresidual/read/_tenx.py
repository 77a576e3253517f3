"""10x Genomics loaders: Visium and Xenium output folders.

scanpy reads the count matrices (:func:`scanpy.read_10x_h5`, :func:`scanpy.read_10x_mtx`);
pandas the Visium tissue positions and the Xenium cells table. squidpy's ``read.visium`` is
not wrapped: it sets coordinates only when it also loads both images, and looks for a MEX
matrix in ``outs/`` instead of ``outs/filtered_feature_bc_matrix/``. Nor is spatialdata-io's
``xenium``: it needs the whole instrument output (``experiment.xenium``, transcripts,
boundaries, images) and returns a SpatialData.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import scanpy as sc
from anndata import AnnData

from .._constants import SPATIAL_KEY
from .._errors import ScResidualError
from ._common import coordinate_array, finalize_counts, read_frame, reading, text_index

GENE_EXPRESSION = "Gene Expression"
H5_METADATA = ("library_ids", "chemistry_description", "software_version")


def _text(value) -> str:
    """An HDF5 attribute as text; of an array, its first entry."""
    value = np.ravel(value)[0] if np.ndim(value) else value
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def read_count_matrix(folder: Path, count_file: str, fix: str) -> tuple[AnnData, Path, dict]:
    """All features of ``folder / count_file``: a 10x HDF5 file, else the MEX folder of its stem.

    Returns the AnnData (symbols, not yet unique, as ``var_names``), the path read and the
    HDF5 run metadata (empty for MEX). ``fix`` ends the message when the matrix is unreadable.
    """
    path, mex = folder / count_file, folder / count_file.removesuffix(".h5")
    path, attrs = mex if not path.exists() and mex.is_dir() else path, {}
    with reading("10x count matrix", path, fix), warnings.catch_warnings():
        # repeated symbols are made unique per feature type; repeated barcodes are refused later
        warnings.filterwarnings("ignore", "(Variable|Observation) names are not unique")
        if path.is_dir():
            adata = sc.read_10x_mtx(path, gex_only=False, make_unique=False)
        else:
            adata = sc.read_10x_h5(path, gex_only=False)
            with h5py.File(path, "r") as f:
                attrs = {k: _text(f.attrs[k]) for k in H5_METADATA if k in f.attrs}
    if "feature_types" not in adata.var:  # Cell Ranger 2 holds gene expression only
        adata.var["feature_types"] = GENE_EXPRESSION
    return adata, path, attrs


def split_gene_expression(adata: AnnData) -> tuple[AnnData, AnnData]:
    """('Gene Expression' features with unique symbols, a view of the others)."""
    is_gex = adata.var["feature_types"].astype(str).to_numpy() == GENE_EXPRESSION
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Variable names are not unique")  # until made so
        gex = adata[:, is_gex].copy()
    gex.var_names_make_unique()
    return gex, adata[:, ~is_gex]


# ---------------------------------------------------------------------------- Visium
POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]
"""Columns of ``tissue_positions.csv`` (the header Space Ranger >= 2 writes)."""

POSITION_FILES = ["tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet"]
PROTEIN_TYPE = "Antibody Capture"
SPACE_RANGER = "copy the complete 'outs/' folder written by Space Ranger"


def _read_images(spatial_dir: Path) -> dict[str, np.ndarray]:
    from matplotlib.image import imread

    images = {}
    for res in ("hires", "lowres"):
        path = spatial_dir / f"tissue_{res}_image.png"
        if path.is_file():
            with reading("image", path, f"{SPACE_RANGER}, or pass load_images=False"):
                images[res] = imread(path)
    if not images:
        raise ScResidualError(
            f"no tissue_hires_image.png or tissue_lowres_image.png in {spatial_dir}; copy the "
            "images from Space Ranger or pass load_images=False."
        )
    return images


def _add_protein(adata: AnnData, other: AnnData, source: Path) -> None:
    """Put 'Antibody Capture' features in ``obsm['protein']``; warn about dropping the rest."""
    types = other.var["feature_types"].astype(str).to_numpy()
    is_protein = types == PROTEIN_TYPE
    if is_protein.any():
        adata.obsm["protein"] = np.asarray(other.X[:, is_protein].todense(), dtype=np.float32)
        adata.uns["protein_names"] = np.asarray(other.var_names[is_protein], dtype=str)
    dropped = sorted(set(types[~is_protein]))
    if dropped:
        warnings.warn(
            f"dropping features of type {', '.join(dropped)} from {source.name}; only "
            f"'Gene Expression' and '{PROTEIN_TYPE}' are loaded.",
            UserWarning,
            stacklevel=3,
        )


def visium(
    path: str | os.PathLike,
    *,
    count_file: str = "filtered_feature_bc_matrix.h5",
    library_id: str | None = None,
    load_images: bool = False,
) -> AnnData:
    """Read a 10x Visium Space Ranger output folder.

    Parameters
    ----------
    path
        The Space Ranger ``outs/`` folder, holding the count matrix and ``spatial/``.
    count_file
        Count matrix inside ``path``: a 10x HDF5 file, or a MEX folder. When the ``.h5`` file is
        absent, the MEX folder of the same stem (``filtered_feature_bc_matrix/``) is used.
    library_id
        Key under ``uns['spatial']``; defaults to the library id stored in the HDF5 file, else
        the folder name.
    load_images
        Also load ``spatial/tissue_hires_image.png`` / ``tissue_lowres_image.png`` into
        ``uns['spatial'][library_id]['images']``.

    Returns
    -------
    AnnData of the in-tissue spots with

    - ``X`` and ``layers['counts']``: gene-expression counts, float32 CSR;
    - ``var_names``: gene symbols made unique, ``var['gene_ids']``, ``var['feature_types']``;
    - ``obs['in_tissue']``, ``obs['array_row']``, ``obs['array_col']``;
    - ``obsm['spatial']``: full-resolution pixel coordinates as (x, y) = (``pxl_col_in_fullres``,
      ``pxl_row_in_fullres``), the order scanpy's ``read_visium`` uses;
    - ``uns['spatial'][library_id]``: ``scalefactors``, ``metadata`` (and ``images``);
    - ``obsm['protein']`` (float32, spots x proteins) and ``uns['protein_names']`` when the
      matrix holds 'Antibody Capture' features.

    Other non-gene feature types are dropped with a warning. Input files are only read.

    """
    folder = Path(path).expanduser()
    spatial = folder / "spatial"
    with reading("Visium scale factors", spatial / "scalefactors_json.json", SPACE_RANGER):
        scalefactors = json.loads((spatial / "scalefactors_json.json").read_text("utf-8"))
    matrix, source, attrs = read_count_matrix(
        folder, count_file, f"{SPACE_RANGER} (the .h5 file or its MEX folder), or pass count_file="
    )
    gex, other = split_gene_expression(matrix)
    file = next(
        (spatial / n for n in POSITION_FILES if (spatial / n).exists()), spatial / POSITION_FILES[0]
    )
    with reading("tissue positions file", file, SPACE_RANGER):
        old = file.name == "tissue_positions_list.csv"  # Space Ranger 1 wrote no header
        positions = read_frame(file, header=not old)
        if old:
            positions.columns = POSITION_COLUMNS
        positions = positions.set_index("barcode").reindex(gex.obs_names)
        values = coordinate_array(
            positions,
            POSITION_COLUMNS[1:],
            f"tissue positions file {file.name}",
            "use the positions file from the same Space Ranger run",
        )
    keep = values[:, 0] == 1
    adata = gex[keep].copy()
    for j, col in enumerate(POSITION_COLUMNS[1:4]):
        adata.obs[col] = values[keep, j].astype(np.int64)
    adata.obsm[SPATIAL_KEY] = values[keep][:, [4, 3]]  # (x, y) = (pxl_col, pxl_row), as scanpy
    _add_protein(adata, other[keep], source)
    entry: dict = {
        "scalefactors": scalefactors,
        "metadata": {k: v for k, v in attrs.items() if k != "library_ids"},
    }
    if load_images:
        entry["images"] = _read_images(spatial)
    library_id = library_id or attrs.get("library_ids") or folder.resolve().name
    adata.uns[SPATIAL_KEY] = {str(library_id): entry}
    return finalize_counts(adata, source.name, SPACE_RANGER)


# ---------------------------------------------------------------------------- Xenium
CELL_FILES = ["cells.parquet", "cells.csv.gz", "cells.csv"]
XENIUM = "copy cell_feature_matrix.h5 and cells.parquet (or cells.csv.gz) from the Xenium output"
CONTROL_COLUMNS = {
    "Negative Control Probe": "control_probe_counts",
    "Negative Control Codeword": "control_codeword_counts",
    "Blank Codeword": "control_codeword_counts",
    "Unassigned Codeword": "unassigned_codeword_counts",
    "Deprecated Codeword": "deprecated_codeword_counts",
    "Genomic Control": "genomic_control_counts",
}
"""``obs`` column receiving the per-cell total of each non-gene Xenium feature type."""


def _control_totals(other: AnnData) -> dict[str, np.ndarray | float]:
    """Per-cell totals of the non-gene features, one ``obs`` column per kind of control."""
    totals: dict = {"control_probe_counts": 0.0, "control_codeword_counts": 0.0}
    types = other.var["feature_types"].astype(str).to_numpy()
    for kind in sorted(set(types)):
        slug = re.sub(r"[^0-9a-z]+", "_", kind.lower()).strip("_") or "other"
        col = CONTROL_COLUMNS.get(kind, f"{slug}_counts")
        summed = np.asarray(other.X[:, types == kind].sum(axis=1), dtype=np.float64).ravel()
        totals[col] = totals.get(col, 0.0) + summed
    return totals


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
    folder = Path(path).expanduser()
    matrix, source, _ = read_count_matrix(folder, "cell_feature_matrix.h5", XENIUM)
    adata, other = split_gene_expression(matrix)
    file = next((folder / n for n in CELL_FILES if (folder / n).exists()), folder / CELL_FILES[0])
    with reading("Xenium cells table", file, XENIUM):
        cells = read_frame(file, dtype={"cell_id": str})
        cells.index = text_index(cells.pop("cell_id"))
        cells = cells.reindex(adata.obs_names)
        adata.obsm[SPATIAL_KEY] = coordinate_array(
            cells,
            ["x_centroid", "y_centroid"],
            f"Xenium cells table {file.name}",
            "use the cells table and count matrix of the same Xenium run",
        )
    obs = cells.drop(columns=["x_centroid", "y_centroid"])
    for col in obs.select_dtypes(object):  # parquet string columns may come as bytes
        obs[col] = [v.decode() if isinstance(v, bytes) else v for v in obs[col]]
    adata.obs = obs.assign(**_control_totals(other))
    return finalize_counts(adata, source.name, XENIUM)
