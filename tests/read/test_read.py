"""Tests of scresidual.read on small synthetic files in the real on-disk layouts."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from scresidual import ScResidualError, read

from ..conftest import SHARED

STARMAP = SHARED / "spatial" / "starmap_v1.h5ad"


# --------------------------------------------------------------------------- helpers


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def load_unchanged(fn, *paths, **kwargs):
    """Call ``fn(*paths, **kwargs)`` and assert every input file is byte-identical afterwards."""
    before = {}
    for p in paths:
        before.update(tree_hashes(Path(p)))
    out = fn(*paths, **kwargs)
    after = {}
    for p in paths:
        after.update(tree_hashes(Path(p)))
    assert before == after
    return out


def raises_one_line(match: str):
    """``pytest.raises`` for a ScResidualError whose message matches and is one line."""

    class _Ctx:
        def __enter__(self):
            self._cm = pytest.raises(ScResidualError, match=match)
            self._info = self._cm.__enter__()
            return self._info

        def __exit__(self, *exc):
            out = self._cm.__exit__(*exc)
            assert "\n" not in str(self._info.value)
            return out

    return _Ctx()


def write_10x_h5(path: Path, counts: np.ndarray, barcodes, ids, names, types, library_id="lib1"):
    """Write a cells x features count array in the 10x feature-barcode HDF5 layout."""
    M = sp.csc_matrix(np.asarray(counts).T)  # features x barcodes, CSC by barcode
    with h5py.File(path, "w") as f:
        f.attrs["library_ids"] = np.array([library_id.encode()])
        f.attrs["chemistry_description"] = b"Spatial 3' v1"
        f.attrs["software_version"] = b"spaceranger-2.0.0"
        g = f.create_group("matrix")
        g.create_dataset("data", data=M.data.astype(np.int32))
        g.create_dataset("indices", data=M.indices.astype(np.int64))
        g.create_dataset("indptr", data=M.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(M.shape, dtype=np.int32))
        g.create_dataset("barcodes", data=np.array([b.encode() for b in barcodes]))
        ft = g.create_group("features")
        ft.create_dataset("id", data=np.array([s.encode() for s in ids]))
        ft.create_dataset("name", data=np.array([s.encode() for s in names]))
        ft.create_dataset("feature_type", data=np.array([s.encode() for s in types]))
        ft.create_dataset("genome", data=np.array([b"GRCh38"] * len(ids)))


def write_mex(folder: Path, counts: np.ndarray, barcodes, ids, names, types):
    """Write the MEX layout: matrix.mtx.gz, barcodes.tsv.gz, features.tsv.gz."""
    folder.mkdir(parents=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.coo_matrix(np.asarray(counts).T.astype(np.int64)))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.write("".join(f"{b}\n" for b in barcodes))
    with gzip.open(folder / "features.tsv.gz", "wt") as fh:
        fh.write("".join(f"{i}\t{n}\t{t}\n" for i, n, t in zip(ids, names, types, strict=True)))


GENE_IDS = ["ENSG1", "ENSG2", "ENSG3", "ENSG4"]
GENE_NAMES = ["GeneA", "GeneB", "GeneA", "GeneD"]  # a repeated symbol
PROT_IDS = ["CD3", "CD19"]
BARCODES = [f"AAAC{i}-1" for i in range(6)]
# full-resolution pixel positions per barcode: (row, col)
PXL = {b: (100 + 10 * i, 500 + 7 * i) for i, b in enumerate(BARCODES)}


def visium_counts(protein: bool) -> tuple[np.ndarray, list, list, list]:
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, size=(len(BARCODES), 4))
    ids, names, types = list(GENE_IDS), list(GENE_NAMES), ["Gene Expression"] * 4
    if protein:
        X = np.hstack([X, 100 + np.arange(len(BARCODES) * 2).reshape(-1, 2)])
        ids += PROT_IDS
        names += PROT_IDS
        types += ["Antibody Capture"] * 2
    return X, ids, names, types


def make_visium(
    root: Path,
    *,
    layout: str = "h5",
    positions: str = "new",
    protein: bool = False,
    barcodes=None,
    images: bool = False,
) -> tuple[Path, np.ndarray]:
    """A Space Ranger ``outs/`` folder; BARCODES[2] is out of tissue."""
    root.mkdir(parents=True)
    X, ids, names, types = visium_counts(protein)
    barcodes = list(BARCODES) if barcodes is None else barcodes
    if layout == "h5":
        write_10x_h5(root / "filtered_feature_bc_matrix.h5", X, barcodes, ids, names, types)
    else:
        write_mex(root / "filtered_feature_bc_matrix", X, barcodes, ids, names, types)
    spatial = root / "spatial"
    spatial.mkdir()
    rows = []
    for b in BARCODES + ["GGGG0-1", "GGGG1-1"]:  # two extra spots not in the matrix
        r, c = PXL.get(b, (1, 2))
        rows.append([b, 0 if b in ("AAAC2-1", "GGGG0-1") else 1, 3, 4, r, c])
    df = pd.DataFrame(
        rows,
        columns=[
            "barcode",
            "in_tissue",
            "array_row",
            "array_col",
            "pxl_row_in_fullres",
            "pxl_col_in_fullres",
        ],
    )
    if positions == "new":
        df.to_csv(spatial / "tissue_positions.csv", index=False)
    else:
        df.to_csv(spatial / "tissue_positions_list.csv", index=False, header=False)
    scalefactors = {
        "tissue_hires_scalef": 0.17,
        "tissue_lowres_scalef": 0.05,
        "spot_diameter_fullres": 89.4,
        "fiducial_diameter_fullres": 144.4,
    }
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    if images:
        from matplotlib.image import imsave

        imsave(spatial / "tissue_hires_image.png", np.zeros((8, 6, 3)))
        imsave(spatial / "tissue_lowres_image.png", np.ones((4, 3, 3)))
    return root, X


XEN_TYPES = ["Gene Expression"] * 3 + [
    "Negative Control Probe",
    "Negative Control Probe",
    "Negative Control Codeword",
    "Unassigned Codeword",
]
XEN_NAMES = [
    "Actb",
    "Gapdh",
    "Sox2",
    "NegControlProbe_1",
    "NegControlProbe_2",
    "NegControlCodeword_1",
    "BLANK_0001",
]
XEN_IDS = [f"X{i}" for i in range(len(XEN_NAMES))]
CELL_IDS = ["aaaa-1", "aaab-1", "aaac-1", "aaad-1", "aaae-1"]


def make_xenium(
    root: Path,
    *,
    matrix: str = "h5",
    cells: str = "parquet",
    bytes_ids: bool = False,
    drop_cell: str | None = None,
    drop_column: str | None = None,
) -> tuple[Path, np.ndarray, pd.DataFrame]:
    """A Xenium output folder with a shuffled cells table holding one extra cell."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    X = rng.poisson(3.0, size=(len(CELL_IDS), len(XEN_NAMES)))
    if matrix == "h5":
        write_10x_h5(root / "cell_feature_matrix.h5", X, CELL_IDS, XEN_IDS, XEN_NAMES, XEN_TYPES)
    else:
        write_mex(root / "cell_feature_matrix", X, CELL_IDS, XEN_IDS, XEN_NAMES, XEN_TYPES)
    ids = CELL_IDS + ["zzzz-1"]
    df = pd.DataFrame(
        {
            "cell_id": ids,
            "x_centroid": np.arange(len(ids)) * 10.0 + 0.5,
            "y_centroid": np.arange(len(ids)) * -3.0,
            "transcript_counts": np.arange(len(ids)) + 20,
            "cell_area": np.linspace(50, 60, len(ids)),
        }
    )
    df = df.iloc[::-1].reset_index(drop=True)  # different order from the matrix
    if drop_cell is not None:
        df = df[df["cell_id"] != drop_cell]
    if drop_column is not None:
        df = df.drop(columns=drop_column)
    out = df.copy()
    if bytes_ids:
        out["cell_id"] = [s.encode() for s in out["cell_id"]]
    if cells == "parquet":
        out.to_parquet(root / "cells.parquet", index=False)
    else:
        out.to_csv(root / "cells.csv.gz", index=False)
    return root, X, df.set_index("cell_id")


def make_tables(root: Path, *, fmt: str = "csv", counts=None, extra_coord: bool = True):
    """A counts table (cell_id + 3 genes) and a shuffled coordinates table."""
    root.mkdir(parents=True, exist_ok=True)
    ids = ["c0", "c1", "c2", "c3"]
    if counts is None:
        counts = pd.DataFrame(
            {"cell_id": ids, "Gad1": [0, 1, 2, 3], "Sst": [5, 0, 0, 1], "Vip": [1, 1, 1, 1]}
        )
    coords = pd.DataFrame(
        {
            "cell_id": ids[::-1],
            "x": [4.0, 3.0, 2.0, 1.0],
            "y": [40.0, 30.0, 20.0, 10.0],
            "fov": [1, 1, 2, 2],
        }
    )
    if extra_coord:
        coords = pd.concat(
            [coords, pd.DataFrame({"cell_id": ["cX"], "x": [0.0], "y": [0.0], "fov": [9]})]
        )
    if fmt == "csv":
        cpath, xpath = root / "counts.csv", root / "coords.csv"
        counts.to_csv(cpath, index=False)
        coords.to_csv(xpath, index=False)
    elif fmt == "tsv":
        cpath, xpath = root / "counts.tsv.gz", root / "coords.tsv"
        counts.to_csv(cpath, index=False, sep="\t")
        coords.to_csv(xpath, index=False, sep="\t")
    else:
        cpath, xpath = root / "counts.parquet", root / "coords.parquet"
        counts.to_parquet(cpath, index=False)
        coords.to_parquet(xpath, index=False)
    return cpath, xpath


def make_h5ad(
    path: Path, *, n_obs: int = 50, spatial: bool = True, X=None, obs_names=None, coords=None
) -> ad.AnnData:
    rng = np.random.default_rng(2)
    if X is None:
        X = sp.csr_matrix(rng.poisson(1.0, size=(n_obs, 30)).astype(np.float32))
    adata = ad.AnnData(X=X)
    adata.obs_names = obs_names if obs_names is not None else [f"cell{i}" for i in range(n_obs)]
    if spatial:
        adata.obsm["spatial"] = rng.uniform(size=(n_obs, 2)) if coords is None else coords
    adata.write_h5ad(path)
    return adata


# --------------------------------------------------------------------------- h5ad


def test_h5ad_reads_and_leaves_file_unchanged(tmp_path):
    path = tmp_path / "a.h5ad"
    ref = make_h5ad(path)
    adata = load_unchanged(read.h5ad, path)
    assert adata.shape == (50, 30)
    np.testing.assert_allclose(adata.obsm["spatial"], ref.obsm["spatial"])


def test_h5ad_backed(tmp_path):
    path = tmp_path / "a.h5ad"
    make_h5ad(path)
    adata = load_unchanged(read.h5ad, path, backed="r")
    try:
        assert adata.isbacked and adata.shape == (50, 30)
    finally:
        adata.file.close()
    with raises_one_line("backed='r\\+' is not supported"):
        read.h5ad(path, backed="r+")


def test_h5ad_missing_file_and_wrong_type(tmp_path):
    with raises_one_line("^file not found: .*nope.h5ad; check the path"):
        read.h5ad(tmp_path / "nope.h5ad")
    (tmp_path / "counts.csv").write_text("cell_id,GeneA\nc1,3\n")
    with raises_one_line(r"counts.csv is a table, not an .h5ad; .*scresidual.read.table\(counts"):
        read.h5ad(tmp_path / "counts.csv")
    text = tmp_path / "notes.h5ad"
    text.write_text("this is not hdf5\n" * 10)
    with raises_one_line("notes.h5ad \\(OSError: .*file signature not found.*written by anndata"):
        read.h5ad(text)
    with raises_one_line("could not read h5ad file .*\\(IsADirectoryError"):
        read.h5ad(tmp_path)
    tenx = tmp_path / "m.h5"
    write_10x_h5(
        tenx, np.ones((2, 2), int), ["a", "b"], ["g1", "g2"], ["g1", "g2"], ["Gene Expression"] * 2
    )
    with raises_one_line("10x count matrix, not an .h5ad"):
        read.h5ad(tenx)


def test_h5ad_truncated(tmp_path):
    path = tmp_path / "full.h5ad"
    make_h5ad(path, n_obs=400)
    cut = tmp_path / "cut.h5ad"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with raises_one_line("truncated"):
        load_unchanged(read.h5ad, cut)


def test_h5ad_missing_and_bad_coordinates(tmp_path):
    path = tmp_path / "nospatial.h5ad"
    make_h5ad(path, spatial=False)
    with raises_one_line("no spatial coordinates"):
        read.h5ad(path)
    assert read.h5ad(path, require_spatial=False).shape == (50, 30)
    with raises_one_line("no spatial coordinates in adata.obsm\\['xy'\\]"):
        read.h5ad(path, spatial_key="xy")
    coords = np.ones((50, 2))
    coords[3, 1] = np.nan
    nan_path = tmp_path / "nancoords.h5ad"
    make_h5ad(nan_path, coords=coords)
    with raises_one_line("NaN/inf"):
        read.h5ad(nan_path, require_spatial=False)  # present coordinates are still checked


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_h5ad_duplicate_names_and_nan_x(tmp_path):
    dup = tmp_path / "dup.h5ad"
    make_h5ad(dup, n_obs=4, obs_names=["a", "b", "a", "c"])
    with raises_one_line("duplicate cell names"):
        read.h5ad(dup)
    X = np.ones((5, 3), dtype=np.float32)
    X[1, 2] = np.nan
    nan = tmp_path / "nanx.h5ad"
    make_h5ad(nan, n_obs=5, X=X)
    with raises_one_line("adata.X holds 1 NaN/inf"):
        read.h5ad(nan)
    with raises_one_line("adata.X holds 1 NaN/inf"):
        read.h5ad(nan, backed="r")


@pytest.mark.skipif(not STARMAP.exists(), reason=f"{STARMAP} not available")
def test_h5ad_starmap_shared_data():
    adata = load_unchanged(read.h5ad, STARMAP)
    assert adata.n_obs > 0 and adata.obsm["spatial"].shape == (adata.n_obs, 2)


# --------------------------------------------------------------------------- visium


@pytest.mark.parametrize("layout", ["h5", "mex"])
@pytest.mark.parametrize("positions", ["new", "old"])
def test_visium_layouts(tmp_path, layout, positions):
    root, X = make_visium(tmp_path / "outs", layout=layout, positions=positions)
    adata = load_unchanged(read.visium, root)
    keep = [b for b in BARCODES if b != "AAAC2-1"]
    assert list(adata.obs_names) == keep
    assert adata.shape == (5, 4)
    assert list(adata.var_names) == ["GeneA", "GeneB", "GeneA-1", "GeneD"]
    assert list(adata.var["gene_ids"]) == GENE_IDS
    # scanpy convention: obsm['spatial'] = (x, y) = (pxl_col_in_fullres, pxl_row_in_fullres)
    expected = np.array([[PXL[b][1], PXL[b][0]] for b in keep], dtype=float)
    np.testing.assert_array_equal(adata.obsm["spatial"], expected)
    assert (adata.obs["in_tissue"] == 1).all()
    rows = [i for i, b in enumerate(BARCODES) if b != "AAAC2-1"]
    assert sp.issparse(adata.X) and adata.X.format == "csr" and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), X[rows])
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), X[rows])
    lib = "lib1" if layout == "h5" else "outs"
    assert adata.uns["spatial"][lib]["scalefactors"]["tissue_hires_scalef"] == 0.17
    assert "images" not in adata.uns["spatial"][lib]


def test_visium_protein_split_images_and_write(tmp_path):
    root, X = make_visium(tmp_path / "outs", protein=True, images=True)
    adata = load_unchanged(read.visium, root, library_id="s1", load_images=True)
    assert adata.shape == (5, 4)
    assert list(adata.uns["protein_names"]) == PROT_IDS
    rows = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(adata.obsm["protein"], X[rows][:, 4:])
    assert set(adata.var["feature_types"]) == {"Gene Expression"}
    images = adata.uns["spatial"]["s1"]["images"]
    assert images["hires"].shape[:2] == (8, 6) and images["lowres"].shape[:2] == (4, 3)
    adata.write_h5ad(tmp_path / "out.h5ad")  # the result is serialisable
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.obsm["protein"], adata.obsm["protein"])


def test_visium_errors(tmp_path):
    with raises_one_line(
        "^Visium scale factors not found: .*missing.*scalefactors_json.json; check the path"
    ):
        read.visium(tmp_path / "missing")
    root, _ = make_visium(tmp_path / "a")
    (root / "filtered_feature_bc_matrix.h5").unlink()
    with raises_one_line("matrix not found: .*filtered_feature_bc_matrix.h5 .*MEX folder"):
        read.visium(root)

    root, _ = make_visium(tmp_path / "b")
    (root / "spatial" / "tissue_positions.csv").unlink()
    with raises_one_line("positions file not found: .*tissue_positions.csv; check the path"):
        read.visium(root)

    root, _ = make_visium(tmp_path / "c")
    (root / "spatial" / "scalefactors_json.json").write_text("{not json")
    with raises_one_line("scale factors .*scalefactors_json.json \\(JSONDecodeError"):
        read.visium(root)

    root, _ = make_visium(tmp_path / "d")
    pos = root / "spatial" / "tissue_positions.csv"
    pd.read_csv(pos).drop(columns="pxl_col_in_fullres").to_csv(pos, index=False)
    with raises_one_line("tissue_positions.csv \\(KeyError: .*pxl_col_in_fullres"):
        read.visium(root)

    root, _ = make_visium(tmp_path / "e", barcodes=BARCODES[:5] + ["NOTPRESENT-1"])
    with raises_one_line(
        "1 of 6 cells lack a row .* tissue_positions.csv \\(e.g. cell 'NOTPRESENT-1'"
    ):
        read.visium(root)

    root, _ = make_visium(tmp_path / "f", barcodes=BARCODES[:5] + [BARCODES[0]])
    with raises_one_line("bc_matrix.h5 holds the cell id 'AAAC0-1' twice; copy the complete"):
        read.visium(root)

    root, _ = make_visium(tmp_path / "g", images=False)
    with raises_one_line("no tissue_hires_image.png"):
        read.visium(root, load_images=True)


def test_visium_corrupt_count_matrix(tmp_path):
    root, _ = make_visium(tmp_path / "a")
    h5 = root / "filtered_feature_bc_matrix.h5"
    data = h5.read_bytes()
    h5.write_bytes(data[: len(data) // 2])
    with raises_one_line("could not read 10x count matrix .*\\(OSError: .*truncated file"):
        load_unchanged(read.visium, root)

    h5.write_text("barcode,gene\n")
    with raises_one_line("10x count matrix .*\\(OSError: .*file signature not found"):
        read.visium(root)

    with h5py.File(h5, "w") as f:
        f.create_dataset("something", data=np.arange(3))
    with raises_one_line(
        "could not read 10x count matrix .*bc_matrix.h5 .*written by Space Ranger"
    ):
        read.visium(root)

    root, _ = make_visium(tmp_path / "b", layout="mex")
    mtx = root / "filtered_feature_bc_matrix" / "matrix.mtx.gz"
    data = mtx.read_bytes()
    mtx.write_bytes(data[: len(data) // 2])
    with raises_one_line("10x count matrix .*filtered_feature_bc_matrix \\(EOFError"):
        read.visium(root)
    mtx.unlink()
    with raises_one_line("10x count matrix not found: .*Did not find file .*matrix.mtx.gz"):
        read.visium(root)


def test_visium_legacy_h5_and_bad_counts(tmp_path):
    root, X = make_visium(tmp_path / "legacy")
    h5 = root / "filtered_feature_bc_matrix.h5"
    M = sp.csc_matrix(X.T)
    with h5py.File(h5, "w") as f:  # Cell Ranger 2 layout: one group per genome, no features/
        g = f.create_group("GRCh38")
        g.create_dataset("data", data=M.data.astype(np.int32))
        g.create_dataset("indices", data=M.indices)
        g.create_dataset("indptr", data=M.indptr)
        g.create_dataset("shape", data=np.array(M.shape))
        g.create_dataset("barcodes", data=np.array([b.encode() for b in BARCODES]))
        g.create_dataset("genes", data=np.array([s.encode() for s in GENE_IDS]))
        g.create_dataset("gene_names", data=np.array([s.encode() for s in GENE_NAMES]))
    adata = read.visium(root)
    assert adata.shape == (5, 4) and list(adata.var["gene_ids"]) == GENE_IDS

    root, X = make_visium(tmp_path / "neg")
    X = X.copy()
    X[0, 0] = -3
    write_10x_h5(
        root / "filtered_feature_bc_matrix.h5",
        X,
        BARCODES,
        GENE_IDS,
        GENE_NAMES,
        ["Gene Expression"] * 4,
    )
    with raises_one_line("1 negative counts"):
        read.visium(root)

    root, _ = make_visium(tmp_path / "nanpos", positions="old")
    pos = root / "spatial" / "tissue_positions_list.csv"
    lines = pos.read_text().splitlines()
    lines[0] = ",".join(lines[0].split(",")[:-1] + [""])
    pos.write_text("\n".join(lines) + "\n")
    with raises_one_line(
        "1 of 6 cells lack .* \\(e.g. cell 'AAAC0-1', column 'pxl_col_in_fullres'\\)"
    ):
        read.visium(root)


# --------------------------------------------------------------------------- xenium


@pytest.mark.parametrize(
    ("matrix", "cells", "bytes_ids"),
    [("h5", "parquet", False), ("h5", "parquet", True), ("mex", "csv", False)],
)
def test_xenium_layouts(tmp_path, matrix, cells, bytes_ids):
    root, X, df = make_xenium(tmp_path / "xen", matrix=matrix, cells=cells, bytes_ids=bytes_ids)
    adata = load_unchanged(read.xenium, root)
    assert list(adata.obs_names) == CELL_IDS
    assert list(adata.var_names) == XEN_NAMES[:3]
    assert adata.X.format == "csr" and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), X[:, :3])
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), X[:, :3])
    xy = df.loc[CELL_IDS, ["x_centroid", "y_centroid"]].to_numpy()
    np.testing.assert_allclose(adata.obsm["spatial"], xy)
    np.testing.assert_array_equal(adata.obs["control_probe_counts"], X[:, 3:5].sum(1))
    np.testing.assert_array_equal(adata.obs["control_codeword_counts"], X[:, 5])
    np.testing.assert_array_equal(adata.obs["unassigned_codeword_counts"], X[:, 6])
    np.testing.assert_array_equal(
        adata.obs["transcript_counts"], df.loc[CELL_IDS, "transcript_counts"]
    )
    assert "x_centroid" not in adata.obs and "cell_id" not in adata.obs
    adata.write_h5ad(tmp_path / "xen.h5ad")  # the result is serialisable


def test_xenium_errors(tmp_path):
    with raises_one_line("^10x count matrix not found: .*nothing.*; check the path"):
        read.xenium(tmp_path / "nothing")
    root, *_ = make_xenium(tmp_path / "a", drop_cell="aaac-1")
    with raises_one_line("1 of 5 cells lack a row .* cells.parquet \\(e.g. cell 'aaac-1'"):
        read.xenium(root)
    root, *_ = make_xenium(tmp_path / "b", drop_column="y_centroid")
    with raises_one_line("cells table .*\\(KeyError: .*y_centroid"):
        read.xenium(root)
    root, *_ = make_xenium(tmp_path / "c")
    (root / "cells.parquet").unlink()
    with raises_one_line("cells table not found: .*cells.parquet; check the path"):
        read.xenium(root)
    root, *_ = make_xenium(tmp_path / "d", cells="csv")
    (root / "cell_feature_matrix.h5").unlink()
    with raises_one_line("10x count matrix not found: .*cell_feature_matrix.h5 .*check the path"):
        read.xenium(root)
    root, *_ = make_xenium(tmp_path / "dup", cells="csv")
    cells = root / "cells.csv.gz"
    df = pd.read_csv(cells)
    df.loc[0, "cell_id"] = df.loc[1, "cell_id"]
    df.to_csv(cells, index=False)
    with raises_one_line("cells.csv.gz \\(ValueError: .*duplicate labels"):
        read.xenium(root)
    root, *_ = make_xenium(tmp_path / "e")
    cells = root / "cells.parquet"
    data = cells.read_bytes()
    cells.write_bytes(data[: len(data) // 2])
    with raises_one_line("could not read Xenium cells table"):
        read.xenium(root)


# --------------------------------------------------------------------------- table


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_table_formats(tmp_path, fmt):
    cpath, xpath = make_tables(tmp_path, fmt=fmt)
    adata = load_unchanged(read.table, cpath, xpath)
    assert list(adata.obs_names) == ["c0", "c1", "c2", "c3"]
    assert list(adata.var_names) == ["Gad1", "Sst", "Vip"]
    assert adata.X.format == "csr" and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray()[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), adata.X.toarray())
    np.testing.assert_array_equal(adata.obsm["spatial"], [[1, 10], [2, 20], [3, 30], [4, 40]])
    assert list(adata.obs["fov"]) == [2, 2, 1, 1]


def test_table_custom_columns(tmp_path):
    counts = pd.DataFrame({"Gad1": [1, 2], "barcode": ["b1", "b2"], "Sst": [0, 3]})
    coords = pd.DataFrame({"px": [1.5, 2.5], "py": [3.0, 4.0], "barcode": ["b2", "b1"]})
    counts.to_csv(tmp_path / "c.txt", sep="\t", index=False)
    coords.to_csv(tmp_path / "xy.csv", index=False)
    adata = read.table(
        tmp_path / "c.txt", tmp_path / "xy.csv", cell_id_column="barcode", x="px", y="py"
    )
    assert list(adata.obs_names) == ["b1", "b2"]
    np.testing.assert_array_equal(adata.obsm["spatial"], [[2.5, 4.0], [1.5, 3.0]])
    np.testing.assert_array_equal(adata.X.toarray(), [[1, 0], [2, 3]])


def test_table_errors(tmp_path):
    cpath, xpath = make_tables(tmp_path / "ok")
    with raises_one_line("^counts table not found: .*none.csv; check the path"):
        read.table(tmp_path / "none.csv", xpath)
    with raises_one_line("coordinates table .*\\(KeyError: .*'xx'.* not found"):
        read.table(cpath, xpath, x="xx")
    with raises_one_line("counts table .*\\(KeyError: 'cid'\\); .*cell_id_column="):
        read.table(cpath, xpath, cell_id_column="cid")

    bad = pd.DataFrame({"cell_id": ["c0", "c1"], "Gad1": [1, 2], "Sst": ["a", "b"]})
    c, x = make_tables(tmp_path / "nonnum", counts=bad)
    with raises_one_line("counts table .*could not convert string to float: 'a'"):
        read.table(c, x)

    nan = pd.DataFrame({"cell_id": ["c0", "c1"], "Gad1": [1, np.nan]})
    c, x = make_tables(tmp_path / "nan", counts=nan)
    with raises_one_line("counts.csv holds 1 NaN/inf counts"):
        read.table(c, x)

    neg = pd.DataFrame({"cell_id": ["c0", "c1"], "Gad1": [1, -2]})
    c, x = make_tables(tmp_path / "neg", counts=neg, fmt="parquet")
    with raises_one_line("counts.parquet holds 1 negative counts; pass .*raw counts"):
        read.table(c, x)

    missing = pd.DataFrame({"cell_id": ["c0", "q1", "q2"], "Gad1": [1, 2, 3]})
    c, x = make_tables(tmp_path / "missing", counts=missing)
    with raises_one_line("2 of 3 cells lack a row or a number in coordinates table coords.csv"):
        read.table(c, x)

    dup = pd.DataFrame({"cell_id": ["c0", "c0"], "Gad1": [1, 2]})
    c, x = make_tables(tmp_path / "dup", counts=dup)
    with raises_one_line("counts.csv holds the cell id 'c0' twice"):
        read.table(c, x)

    only_ids = pd.DataFrame({"cell_id": ["c0", "c1"]})
    c, x = make_tables(tmp_path / "noid", counts=only_ids)
    with raises_one_line("holds 2 cells x 0 genes"):
        read.table(c, x)

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with raises_one_line("empty.csv \\(EmptyDataError"):
        read.table(empty, xpath)

    coords_nan = tmp_path / "coords_nan.csv"
    pd.DataFrame(
        {"cell_id": ["c0", "c1", "c2", "c3"], "x": [1, 2, np.nan, 4], "y": [1, 2, 3, 4]}
    ).to_csv(coords_nan, index=False)
    with raises_one_line(
        "1 of 4 cells lack a row or a number in coordinates table coords_nan.csv "
        "\\(e.g. cell 'c2', column 'x'\\)"
    ):
        read.table(cpath, coords_nan)
