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
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from .._constants import SPATIAL_KEY
from .._errors import ScResidualError
from ._common import (
    as_path,
    finalize_counts,
    first_existing,
    first_line,
    numeric_coordinates,
    read_frame,
    require_columns,
    require_path,
    unique_ids,
)

GENE_EXPRESSION = "Gene Expression"
MEX_FILES = {  # what scanpy's read_10x_mtx opens: Cell Ranger >= 3, and 2 (genes.tsv, no gzip)
    False: ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"),
    True: ("matrix.mtx", "genes.tsv", "barcodes.tsv"),
}
H5_METADATA = ("library_ids", "chemistry_description", "software_version")


def _text(value) -> str:
    """An HDF5 attribute as text; of an array, its first entry."""
    if isinstance(value, np.ndarray) and value.size:
        value = value.flat[0]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _probe_h5(path: Path) -> dict[str, str]:
    """Check cheaply that ``path`` is a 10x matrix HDF5; return its run metadata attributes."""
    if not h5py.is_hdf5(path):
        raise ScResidualError(
            f"{path} is not an HDF5 file (wrong file type or damaged header); pass the 10x "
            "'.h5' count matrix or the MEX folder."
        )
    try:
        with h5py.File(path, "r") as f:  # Cell Ranger 2 keeps one group per genome instead
            tenx = "matrix" in f or any(
                isinstance(g, h5py.Group) and "genes" in g for g in f.values()
            )
            attrs = {k: _text(f.attrs[k]) for k in H5_METADATA if k in f.attrs}
    except Exception as err:  # h5py raises OSError/KeyError on damaged files
        raise _unreadable(path, err) from err
    if not tenx:
        raise ScResidualError(
            f"{path} has no 'matrix' group, so it is not a 10x feature-barcode HDF5; pass the "
            "count matrix written by Space/Cell/Xenium Ranger."
        )
    return attrs


def _unreadable(path: Path, err: Exception) -> ScResidualError:
    return ScResidualError(
        f"could not read 10x count matrix {path}: truncated or corrupt ({type(err).__name__}: "
        f"{first_line(err)}); re-copy the file from the Ranger output."
    )


def _read_mex(folder: Path) -> AnnData:
    """:func:`scanpy.read_10x_mtx` of ``folder``, after checking its three files are there."""
    names = MEX_FILES[(folder / "genes.tsv").is_file()]
    for name in names:
        if not (folder / name).is_file():
            raise ScResidualError(
                f"MEX count folder {folder} lacks {name}; copy the complete folder from the "
                "Ranger output."
            )
    try:
        return sc.read_10x_mtx(folder, gex_only=False, make_unique=False)
    except Exception as err:  # truncated gzip, bad header, files of different runs
        raise ScResidualError(
            f"could not read {folder / names[0]} with {names[1]} and {names[2]} "
            f"({type(err).__name__}: {first_line(err)}); re-copy the folder from the Ranger "
            "output."
        ) from err


def _check_counts(adata: AnnData, source: Path) -> None:
    """Raise unless barcodes are unique and counts numeric, finite and non-negative."""
    unique_ids(
        adata.obs_names,
        f"duplicate barcodes in {source} (e.g. {{dup}}); the count "
        "matrix is damaged or hand-edited, re-copy it from the Ranger output.",
    )
    data = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    problem = (
        f"counts of dtype {data.dtype}"
        if data.dtype.kind not in "iuf"
        else f"{int((~np.isfinite(data)).sum())} NaN/inf counts"
        if not np.isfinite(data).all()
        else f"{int((data < 0).sum())} negative counts"
        if (data < 0).any()
        else None
    )
    if problem:
        raise ScResidualError(
            f"10x count matrix {source} is not a valid feature-barcode matrix ({problem}); "
            "re-copy the file from the Ranger output."
        )


def _read_h5(path: Path) -> AnnData:
    try:
        return sc.read_10x_h5(path, gex_only=False)
    except Exception as err:  # truncated datasets surface only on read
        raise _unreadable(path, err) from err


def read_count_matrix(folder: Path, count_file: str, fix: str) -> tuple[AnnData, Path, dict]:
    """All features of ``folder / count_file`` (10x HDF5 or MEX folder), checked.

    ``count_file="filtered_feature_bc_matrix.h5"`` falls back to the MEX folder
    ``filtered_feature_bc_matrix/`` when the ``.h5`` file is absent. ``fix`` ends the message
    when neither exists. Returns the AnnData (symbols, not yet unique, as ``var_names``), the
    path read and the HDF5 run metadata (empty for MEX).
    """
    path, stem = folder / count_file, count_file.removesuffix(".h5")
    if not path.exists() and (folder / stem).is_dir():
        path = folder / stem
    if not path.exists():
        raise ScResidualError(
            f"no count matrix in {folder}: expected {stem}.h5 (10x HDF5) or {stem}/ (MEX "
            f"folder); {fix}."
        )
    attrs = {} if path.is_dir() else _probe_h5(path)
    with warnings.catch_warnings():
        # repeated symbols are made unique per feature type; repeated barcodes are refused below
        warnings.filterwarnings("ignore", "(Variable|Observation) names are not unique")
        adata = _read_mex(path) if path.is_dir() else _read_h5(path)
    if "feature_types" not in adata.var:  # Cell Ranger 2 holds gene expression only
        adata.var["feature_types"] = GENE_EXPRESSION
    _check_counts(adata, path)
    return adata, path, attrs


def split_gene_expression(adata: AnnData, source: Path) -> tuple[AnnData, AnnData]:
    """('Gene Expression' features with unique symbols, a view of the others); raise if none."""
    types = adata.var["feature_types"].astype(str).to_numpy()
    is_gex = types == GENE_EXPRESSION
    if not is_gex.any():
        raise ScResidualError(
            f"no '{GENE_EXPRESSION}' features in {source} (feature types: "
            f"{', '.join(sorted(set(types))) or 'none'}); pass a gene-expression count matrix."
        )
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
SPACE_RANGER = "use the file written by Space Ranger"


def _read_positions(path: Path) -> pd.DataFrame:
    """The tissue positions, indexed by barcode: the five numeric columns as float64."""
    parquet = path.suffix == ".parquet"
    try:
        with open(path, "rb") as fh:  # Space Ranger 1 wrote no header line
            header = parquet or fh.readline().strip().lower().startswith(b"barcode")
    except OSError as err:
        raise ScResidualError(f"could not open {path}; check its permissions.") from err
    df = read_frame(
        path, "tissue positions file", sep=",", header=header, dtype=None if parquet else str
    )
    if not header:
        df = df.rename(columns=dict(enumerate(POSITION_COLUMNS)))
    require_columns(df, POSITION_COLUMNS, "tissue positions file", path, SPACE_RANGER)
    df.index = unique_ids(
        df["barcode"], f"duplicate barcodes in {path.name} (e.g. {{dup}}); {SPACE_RANGER}."
    )
    values = numeric_coordinates(df, POSITION_COLUMNS[1:], f"tissue positions file {path.name}")
    return pd.DataFrame(values, index=df.index, columns=POSITION_COLUMNS[1:])


def _read_scalefactors(path: Path) -> dict:
    require_path(
        path, "Visium scale factors", "copy the complete 'spatial/' folder from Space Ranger"
    )
    try:
        scalefactors = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(scalefactors, dict):
            raise ValueError(f"a JSON {type(scalefactors).__name__}, not an object")
    except (OSError, ValueError) as err:
        raise ScResidualError(
            f"could not parse {path} as JSON scale factors ({type(err).__name__}: "
            f"{first_line(err)}); re-copy it from Space Ranger."
        ) from err
    return scalefactors


def _read_images(spatial_dir: Path) -> dict[str, np.ndarray]:
    from matplotlib.image import imread

    images = {}
    for res in ("hires", "lowres"):
        path = spatial_dir / f"tissue_{res}_image.png"
        if path.is_file():
            try:
                images[res] = imread(path)
            except Exception as err:  # PIL raises several types for bad images
                raise ScResidualError(
                    f"could not read image {path} ({type(err).__name__}); re-copy it from Space "
                    "Ranger or pass load_images=False."
                ) from err
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
    folder = require_path(
        as_path(path, "path"),
        "Space Ranger output folder",
        "pass the 'outs/' folder that holds the count matrix and 'spatial/'",
        folder=True,
    )
    spatial_dir = require_path(
        folder / "spatial",
        "Visium 'spatial/' folder",
        "copy the complete Space Ranger output including 'spatial/'",
        folder=True,
    )
    positions_file = first_existing(spatial_dir, POSITION_FILES)
    if positions_file is None:
        raise ScResidualError(
            f"no tissue_positions.csv or tissue_positions_list.csv in {spatial_dir}; copy the "
            "complete 'spatial/' folder from Space Ranger."
        )
    scalefactors = _read_scalefactors(spatial_dir / "scalefactors_json.json")
    matrix, source, attrs = read_count_matrix(
        folder, count_file, "copy it from Space Ranger or pass count_file="
    )
    gex, other = split_gene_expression(matrix, source)

    positions = _read_positions(positions_file)
    missing = ~gex.obs_names.isin(positions.index)
    if missing.any():
        raise ScResidualError(
            f"{int(missing.sum())} of {gex.n_obs} barcodes in {source.name} have no row in "
            f"{positions_file.name} (e.g. {gex.obs_names[missing][0]!r}); use the positions "
            "file from the same Space Ranger run."
        )
    positions = positions.loc[gex.obs_names]
    keep = positions["in_tissue"].to_numpy() == 1
    if not keep.any():
        raise ScResidualError(
            f"no spot of {source.name} is marked in_tissue=1 in {positions_file.name}; use the "
            "positions file from the same Space Ranger run."
        )
    adata, positions = gex[keep].copy(), positions[keep]
    for col in ("in_tissue", "array_row", "array_col"):
        adata.obs[col] = positions[col].to_numpy().astype(np.int64)
    adata.obsm[SPATIAL_KEY] = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    _add_protein(adata, other[keep], source)

    if library_id is None:
        library_id = attrs.get("library_ids") or folder.resolve().name
    entry: dict = {
        "scalefactors": scalefactors,
        "metadata": {k: v for k, v in attrs.items() if k != "library_ids"},
    }
    if load_images:
        entry["images"] = _read_images(spatial_dir)
    adata.uns[SPATIAL_KEY] = {str(library_id): entry}
    return finalize_counts(adata)


# ---------------------------------------------------------------------------- Xenium
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
    folder = require_path(
        as_path(path, "path"),
        "Xenium output folder",
        "pass the folder that holds cell_feature_matrix.h5 and cells.parquet",
        folder=True,
    )
    cells_file = first_existing(folder, CELL_FILES)
    if cells_file is None:
        raise ScResidualError(
            f"no cells.parquet or cells.csv.gz in {folder}; copy the cells table from the "
            "Xenium output."
        )
    matrix, source, _ = read_count_matrix(
        folder, "cell_feature_matrix.h5", "copy it from the Xenium output"
    )
    adata, other = split_gene_expression(matrix, source)

    cells = read_frame(cells_file, "Xenium cells table", dtype={"cell_id": str})
    require_columns(
        cells,
        CELL_COLUMNS,
        "Xenium cells table",
        cells_file,
        "use the cells table written by the Xenium instrument",
    )
    cells.index = unique_ids(
        cells.pop("cell_id"),
        f"duplicate cell_id in {cells_file.name} "
        "(e.g. {dup}); use the cells table written by the Xenium instrument.",
    )
    missing = ~adata.obs_names.isin(cells.index)
    if missing.any():
        raise ScResidualError(
            f"{int(missing.sum())} of {adata.n_obs} cell ids in {source.name} have no row in "
            f"{cells_file.name} (e.g. {adata.obs_names[missing][0]!r}); use the cells table and "
            "count matrix from the same Xenium run."
        )
    cells = cells.loc[adata.obs_names]
    adata.obsm[SPATIAL_KEY] = numeric_coordinates(
        cells, CELL_COLUMNS[1:], f"Xenium cells table {cells_file.name}"
    )
    obs = cells.drop(columns=CELL_COLUMNS[1:]).rename_axis(None)
    for col in obs.select_dtypes(object):  # parquet string columns may come as bytes
        obs[col] = [v.decode() if isinstance(v, bytes) else v for v in obs[col]]
    adata.obs = obs.assign(**_control_totals(other))
    return finalize_counts(adata)
