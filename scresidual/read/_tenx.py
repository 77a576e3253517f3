"""10x Genomics feature-barcode matrices (HDF5 and MEX), shared by the Visium and Xenium loaders.

The HDF5 layout (Cell Ranger >= 3, Space Ranger, Xenium Ranger) is a ``matrix`` group holding a
features x barcodes CSC matrix (``data``, ``indices``, ``indptr``, ``shape``), ``barcodes`` and a
``features`` group with ``id``, ``name`` and ``feature_type``. The MEX layout is a folder with
``matrix.mtx.gz`` (features x barcodes), ``barcodes.tsv.gz`` and ``features.tsv.gz``
(``genes.tsv`` in Cell Ranger 2, without a feature-type column).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
from anndata import AnnData
from anndata.utils import make_index_unique

from .._errors import ScResidualError
from ._common import decode, first_existing, read_frame

GENE_EXPRESSION = "Gene Expression"


@dataclass
class FeatureMatrix:
    """A cells x features count matrix with its 10x feature annotation."""

    X: sp.csr_matrix
    barcodes: np.ndarray
    ids: np.ndarray
    names: np.ndarray
    types: np.ndarray
    source: Path
    attrs: dict = field(default_factory=dict)

    def subset(self, mask: np.ndarray) -> FeatureMatrix:
        """The features where ``mask`` is true."""
        idx = np.flatnonzero(mask)
        return FeatureMatrix(
            self.X[:, idx], self.barcodes, self.ids[idx], self.names[idx], self.types[idx],
            self.source, self.attrs,
        )


def _attr_value(value):
    """An HDF5 attribute as plain Python (bytes decoded, arrays as lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_attr_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _corrupt(path: Path, detail: str) -> ScResidualError:
    return ScResidualError(
        f"10x count matrix {path} is not a valid feature-barcode matrix ({detail}); "
        "re-copy the file from the Ranger output."
    )


def _check_csc(path: Path, data, indices, indptr, n_features: int, n_barcodes: int) -> None:
    """Check that CSC arrays agree with each other and with the stored shape."""
    if len(indptr) != n_barcodes + 1:
        raise _corrupt(path, f"indptr has {len(indptr)} entries for {n_barcodes} barcodes")
    if len(data) != len(indices) or (len(indptr) and indptr[-1] != len(data)):
        raise _corrupt(path, "data, indices and indptr lengths disagree")
    if len(indptr) > 1 and np.any(np.diff(indptr) < 0):
        raise _corrupt(path, "indptr is not increasing")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_features):
        raise _corrupt(path, f"feature indices outside 0..{n_features - 1}")


def _check_values(path: Path, data: np.ndarray) -> None:
    """Raise unless the stored counts are numeric, finite and non-negative."""
    if data.dtype.kind not in "iuf":
        raise _corrupt(path, f"counts have dtype {data.dtype}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise _corrupt(path, f"{n_bad} NaN/inf counts")
    if data.size and data.min() < 0:
        raise _corrupt(path, f"{int((data < 0).sum())} negative counts")


def read_10x_h5(path: Path) -> FeatureMatrix:
    """Read a 10x feature-barcode HDF5 file (``matrix`` group, or the Cell Ranger 2 layout).

    Parameters
    ----------
    path
        The ``.h5`` file.

    Returns
    -------
    The matrix as cells x features CSR in its stored dtype, with feature annotation.

    """
    if not h5py.is_hdf5(path):
        raise ScResidualError(
            f"{path} is not an HDF5 file (wrong file type or damaged header); pass the 10x "
            "'.h5' count matrix or the MEX folder."
        )
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
            if "matrix" in f:
                g = f["matrix"]
                legacy = False
            else:
                groups = [k for k in f if isinstance(f[k], h5py.Group) and "genes" in f[k]]
                if not groups:
                    raise ScResidualError(
                        f"{path} has no 'matrix' group, so it is not a 10x feature-barcode "
                        "HDF5; pass the count matrix written by Space/Cell/Xenium Ranger."
                    )
                g = f[groups[0]]
                legacy = True
            needed = ["data", "indices", "indptr", "shape", "barcodes"]
            needed += ["genes"] if legacy else ["features/id"]
            missing = [k for k in needed if k not in g]
            if missing:
                raise ScResidualError(
                    f"10x count matrix {path} lacks dataset(s) {', '.join(missing)} in group "
                    f"{g.name!r}; re-copy the file from the Ranger output."
                )
            data = g["data"][()]
            indices = g["indices"][()].astype(np.int64, copy=False)
            indptr = g["indptr"][()].astype(np.int64, copy=False)
            shape = tuple(int(s) for s in g["shape"][()])
            barcodes = decode(g["barcodes"][()])
            if legacy:
                ids = decode(g["genes"][()])
                names = decode(g["gene_names"][()]) if "gene_names" in g else ids
                types = np.full(len(ids), GENE_EXPRESSION, dtype=object)
            else:
                feats = g["features"]
                ids = decode(feats["id"][()])
                names = decode(feats["name"][()]) if "name" in feats else ids
                types = (
                    decode(feats["feature_type"][()]) if "feature_type" in feats
                    else np.full(len(ids), GENE_EXPRESSION, dtype=object)
                )
    except ScResidualError:
        raise
    except Exception as err:  # h5py raises OSError/KeyError/ValueError on damaged files
        raise ScResidualError(
            f"could not read 10x count matrix {path}: truncated or corrupt "
            f"({type(err).__name__}); re-copy the file from the Ranger output."
        ) from err
    if len(shape) != 2:
        raise _corrupt(path, f"'shape' has {len(shape)} entries, expected 2")
    n_features, n_barcodes = shape
    if len(barcodes) != n_barcodes:
        raise _corrupt(path, f"{len(barcodes)} barcodes for a matrix with {n_barcodes} columns")
    if not (len(ids) == len(names) == len(types) == n_features):
        raise _corrupt(path, f"feature lists do not have {n_features} entries")
    _check_csc(path, data, indices, indptr, n_features, n_barcodes)
    _check_values(path, data)
    X = sp.csc_matrix((data, indices, indptr), shape=(n_features, n_barcodes)).T.tocsr()
    return FeatureMatrix(X, barcodes, ids, names, types, path, attrs)


def _open_text(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_10x_mex(folder: Path) -> FeatureMatrix:
    """Read a 10x MEX folder (``matrix.mtx[.gz]``, ``barcodes.tsv[.gz]``, ``features.tsv[.gz]``).

    Parameters
    ----------
    folder
        The folder holding the three files.

    Returns
    -------
    The matrix as cells x features CSR in its stored dtype, with feature annotation.

    """
    mtx = first_existing(folder, ["matrix.mtx.gz", "matrix.mtx"])
    bc = first_existing(folder, ["barcodes.tsv.gz", "barcodes.tsv"])
    ft = first_existing(folder, ["features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"])
    for found, name in ((mtx, "matrix.mtx.gz"), (bc, "barcodes.tsv.gz"), (ft, "features.tsv.gz")):
        if found is None:
            raise ScResidualError(
                f"MEX count folder {folder} lacks {name}; copy the complete folder from the "
                "Ranger output."
            )
    try:
        with _open_text(mtx) as fh:
            M = scipy.io.mmread(fh)
    except Exception as err:  # truncated gzip, bad header, wrong file type
        raise ScResidualError(
            f"could not read {mtx}: truncated or not a Matrix Market file "
            f"({type(err).__name__}); re-copy it from the Ranger output."
        ) from err
    M = sp.coo_matrix(M)
    _check_values(mtx, M.data)
    barcodes_df = read_frame(bc, "barcodes file", sep="\t", header=False, dtype=str)
    features_df = read_frame(ft, "features file", sep="\t", header=False, dtype=str)
    barcodes = barcodes_df.iloc[:, 0].to_numpy(dtype=object)
    ids = features_df.iloc[:, 0].to_numpy(dtype=object)
    names = features_df.iloc[:, 1].to_numpy(dtype=object) if features_df.shape[1] > 1 else ids
    types = (
        features_df.iloc[:, 2].to_numpy(dtype=object) if features_df.shape[1] > 2
        else np.full(len(ids), GENE_EXPRESSION, dtype=object)
    )
    n_features, n_barcodes = M.shape
    if len(barcodes) != n_barcodes or len(ids) != n_features:
        raise ScResidualError(
            f"MEX folder {folder}: {mtx.name} is {n_features} features x {n_barcodes} barcodes "
            f"but {bc.name} has {len(barcodes)} and {ft.name} has {len(ids)} rows; the files "
            "come from different runs, re-copy the folder."
        )
    return FeatureMatrix(sp.csr_matrix(M.T), barcodes, ids, names, types, folder, {})


def read_count_matrix(folder: Path, count_file: str, fix: str) -> FeatureMatrix:
    """Read ``folder / count_file`` as 10x HDF5, or as a MEX folder of the same stem.

    ``count_file="filtered_feature_bc_matrix.h5"`` falls back to the MEX folder
    ``filtered_feature_bc_matrix/`` when the ``.h5`` file is absent; a ``count_file`` naming a
    folder is read as MEX. ``fix`` ends the error message when neither exists.
    """
    path = folder / count_file
    stem = count_file[:-3] if count_file.endswith(".h5") else count_file
    mex = folder / stem
    if path.is_file():
        return read_10x_h5(path)
    if path.is_dir():
        return read_10x_mex(path)
    if mex.is_dir():
        return read_10x_mex(mex)
    raise ScResidualError(
        f"no count matrix in {folder}: expected {stem}.h5 (10x HDF5) or {stem}/ (MEX folder); "
        f"{fix}."
    )


def check_unique_barcodes(barcodes: np.ndarray, path: Path) -> None:
    """Raise if the barcodes/cell ids of a count matrix repeat."""
    index = pd.Index(barcodes)
    if index.has_duplicates:
        dup = index[index.duplicated()][0]
        raise ScResidualError(
            f"duplicate barcodes in {path} (e.g. {dup!r}); the count matrix is damaged or "
            "hand-edited, re-copy it from the Ranger output."
        )


def to_anndata(m: FeatureMatrix) -> AnnData:
    """An AnnData with symbols (made unique) as ``var_names`` and ``var['gene_ids']``."""
    var = pd.DataFrame(
        {
            "gene_ids": np.asarray(m.ids, dtype=object),
            "feature_types": np.asarray(m.types, dtype=object),
        },
        index=make_index_unique(pd.Index(m.names, dtype=object).astype(str)),
    )
    obs = pd.DataFrame(index=pd.Index(m.barcodes, dtype=object).astype(str))
    return AnnData(X=sp.csr_matrix(m.X, dtype=np.float32), obs=obs, var=var)


def split_gene_expression(m: FeatureMatrix) -> tuple[FeatureMatrix, FeatureMatrix]:
    """Split into ('Gene Expression' features, all other features); raise if no genes."""
    is_gex = np.asarray(m.types == GENE_EXPRESSION, dtype=bool)
    if not is_gex.any():
        found = ", ".join(sorted(set(map(str, m.types)))) or "none"
        raise ScResidualError(
            f"no '{GENE_EXPRESSION}' features in {m.source} (feature types: {found}); pass a "
            "gene-expression count matrix."
        )
    return m.subset(is_gex), m.subset(~is_gex)
