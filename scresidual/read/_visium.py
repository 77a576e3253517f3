"""10x Visium (Space Ranger output folder) loader."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import SPATIAL_KEY
from .._errors import ScResidualError
from ._common import (
    as_path,
    finalize_counts,
    first_existing,
    numeric_coordinates,
    read_frame,
    require_columns,
    require_dir,
    require_file,
)
from ._tenx import (
    check_unique_barcodes,
    read_count_matrix,
    split_gene_expression,
    to_anndata,
)

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


def _has_header(path: Path) -> bool:
    """Whether a tissue-positions text file starts with a header line."""
    if path.suffix == ".parquet":
        return True
    with open(path, "rb") as fh:
        first = fh.readline().strip().lower()
    return first.startswith(b"barcode")


def _read_positions(path: Path) -> pd.DataFrame:
    """Read a tissue-positions file as a table indexed by barcode with the 5 numeric columns."""
    try:
        header = _has_header(path)
    except OSError as err:
        raise ScResidualError(f"could not open {path}; check its permissions.") from err
    df = read_frame(path, "tissue positions file", sep=",", header=header,
                    dtype=None if path.suffix == ".parquet" else str)
    if header:
        require_columns(
            df, POSITION_COLUMNS, "tissue positions file", path,
            "use the file written by Space Ranger",
        )
        df = df[POSITION_COLUMNS]
    else:
        if df.shape[1] < len(POSITION_COLUMNS):
            raise ScResidualError(
                f"tissue positions file {path.name} has {df.shape[1]} columns, expected "
                f"{len(POSITION_COLUMNS)} ({', '.join(POSITION_COLUMNS)}); use the file "
                "written by Space Ranger."
            )
        df = df.iloc[:, : len(POSITION_COLUMNS)]
        df.columns = POSITION_COLUMNS
    barcodes = pd.Index(df["barcode"].astype(str), name=None)
    if barcodes.has_duplicates:
        dup = barcodes[barcodes.duplicated()][0]
        raise ScResidualError(
            f"duplicate barcodes in {path.name} (e.g. {dup!r}); use the file written by "
            "Space Ranger."
        )
    df.index = barcodes
    values = numeric_coordinates(df, POSITION_COLUMNS[1:], f"tissue positions file {path.name}")
    out = pd.DataFrame(values, index=barcodes, columns=POSITION_COLUMNS[1:])
    return out


def _read_scalefactors(path: Path) -> dict:
    require_file(path, "Visium scale factors", "copy the complete 'spatial/' folder from Space "
                 "Ranger")
    try:
        scalefactors = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ScResidualError(
            f"could not parse {path} as JSON ({type(err).__name__}); re-copy it from Space Ranger."
        ) from err
    if not isinstance(scalefactors, dict):
        raise ScResidualError(
            f"{path} holds a JSON {type(scalefactors).__name__}, expected an object of scale "
            "factors; re-copy it from Space Ranger."
        )
    return scalefactors


def _read_images(spatial_dir: Path) -> dict[str, np.ndarray]:
    from matplotlib.image import imread

    images = {}
    for res in ("hires", "lowres"):
        path = spatial_dir / f"tissue_{res}_image.png"
        if not path.is_file():
            continue
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
    folder = require_dir(
        as_path(path, "path"), "Space Ranger output folder",
        "pass the 'outs/' folder that holds the count matrix and 'spatial/'",
    )
    spatial_dir = require_dir(
        folder / "spatial", "Visium 'spatial/' folder",
        "copy the complete Space Ranger output including 'spatial/'",
    )
    positions_file = first_existing(spatial_dir, POSITION_FILES)
    if positions_file is None:
        raise ScResidualError(
            f"no tissue_positions.csv or tissue_positions_list.csv in {spatial_dir}; copy the "
            "complete 'spatial/' folder from Space Ranger."
        )
    scalefactors = _read_scalefactors(spatial_dir / "scalefactors_json.json")

    matrix = read_count_matrix(folder, count_file, "copy it from Space Ranger or pass count_file=")
    check_unique_barcodes(matrix.barcodes, matrix.source)
    gex, other = split_gene_expression(matrix)

    positions = _read_positions(positions_file)
    barcodes = pd.Index(gex.barcodes, dtype=object).astype(str)
    missing = ~barcodes.isin(positions.index)
    if missing.any():
        raise ScResidualError(
            f"{int(missing.sum())} of {len(barcodes)} barcodes in {matrix.source.name} have no "
            f"row in {positions_file.name} (e.g. {barcodes[missing][0]!r}); use the positions "
            "file from the same Space Ranger run."
        )
    positions = positions.loc[barcodes]
    keep = positions["in_tissue"].to_numpy() == 1
    if not keep.any():
        raise ScResidualError(
            f"no spot of {matrix.source.name} is marked in_tissue=1 in {positions_file.name}; "
            "use the positions file from the same Space Ranger run."
        )

    adata = to_anndata(gex)[keep].copy()
    positions = positions.loc[keep]
    for col in ("in_tissue", "array_row", "array_col"):
        adata.obs[col] = positions[col].to_numpy().astype(np.int64)
    adata.obsm[SPATIAL_KEY] = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(
        dtype=np.float64
    )

    is_protein = np.asarray(other.types == PROTEIN_TYPE, dtype=bool)
    if is_protein.any():
        prot = other.subset(is_protein)
        adata.obsm["protein"] = np.asarray(prot.X[keep].todense(), dtype=np.float32)
        adata.uns["protein_names"] = np.asarray(prot.names, dtype=str)
    dropped = sorted(set(map(str, other.types[~is_protein])))
    if dropped:
        warnings.warn(
            f"dropping features of type {', '.join(dropped)} from {matrix.source.name}; only "
            f"'Gene Expression' and '{PROTEIN_TYPE}' are loaded.",
            UserWarning,
            stacklevel=2,
        )

    attrs = matrix.attrs
    if library_id is None:
        ids = attrs.get("library_ids")
        if isinstance(ids, list) and ids:
            library_id = str(ids[0])
        elif isinstance(ids, str) and ids:
            library_id = ids
        else:
            library_id = folder.resolve().name
    entry: dict = {
        "scalefactors": scalefactors,
        "metadata": {
            k: str(attrs[k]) for k in ("chemistry_description", "software_version") if k in attrs
        },
    }
    if load_images:
        entry["images"] = _read_images(spatial_dir)
    adata.uns[SPATIAL_KEY] = {str(library_id): entry}
    return finalize_counts(adata)
