"""Untrusted model folders and careless paths (issue 12): no code runs, no file is lost, and
every failure a user can cause ends in one line ``error: …`` with exit status 2."""

import errno
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scresidual import ScResidualError, _download
from scresidual._io import _lock, atomic_path, recover
from scresidual._normalise import log1p_normalise
from scresidual.cli import main
from scresidual.model import ResidualModel, SpatialRegionClassifier
from scresidual.pp import PCAFeatures, spatial_graph
from scresidual.sources import GeneformerSource, ScviSource

from .conftest import file_hash

N_CELLS, N_GENES = 40, 20


def _slide(n=N_CELLS, seed=0) -> ad.AnnData:
    """A tiny slide: counts, 2-D coordinates, two regions (left/right), 60% labelled."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    region = np.where(xy[:, 0] < 50, "left", "right")
    X = rng.poisson(3, (n, N_GENES)).astype(np.float32)
    X[region == "left", :5] += 10
    a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))
    a.var_names = [f"g{i}" for i in range(N_GENES)]
    a.obsm["spatial"] = xy
    a.obsm["X_src"] = np.eye(2)[(region == "left").astype(int)] + rng.normal(0, 0.3, (n, 2))
    a.obs["region"] = region
    a.obs["label"] = pd.Series(region, index=a.obs_names, dtype=object).where(
        rng.random(n) < 0.6, np.nan
    )
    return a


FIT = [
    "--labels-key",
    "label",
    "--source",
    "obsm:X_src",
    "--arm",
    "linear-probe",
    "--graph",
    "knn:3",
    "--folds",
    "1",
    "--quiet",
]


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _predict_in_a_new_process(model, slide, output) -> subprocess.CompletedProcess:
    """``scresidual predict MODEL SLIDE --output OUTPUT --quiet`` as a user runs it."""
    argv = ["predict", str(model), str(slide), "--output", str(output), "--quiet"]
    return subprocess.run(
        [sys.executable, "-m", "scresidual.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _one_line_error(code, err, *words):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


def _snapshot(folder: Path) -> dict:
    """sha256 of every file under ``folder`` (links recorded, not followed)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = file_hash(p)
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A slide file and a model fitted on it (obsm source, linear probe, 2 epochs)."""
    root = tmp_path_factory.mktemp("fitted")
    slide = root / "slide.h5ad"
    _slide().write_h5ad(slide)
    assert main(["fit", str(slide), "--model-dir", str(root / "model"), *FIT]) == 0
    return slide, root / "model"


@pytest.fixture()
def work(fitted, tmp_path):
    """Fresh copies of the slide and the model for one test."""
    slide, model = fitted
    shutil.copy(slide, tmp_path / "slide.h5ad")
    shutil.copytree(model, tmp_path / "model")
    return tmp_path / "slide.h5ad", tmp_path / "model"


class _Payload:
    """Unpickling this runs ``func(*args)``: what a crafted model file would do."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


PAYLOADS = {
    "open": lambda marker: _Payload(open, str(marker), "w"),
    "os.system": lambda marker: _Payload(os.system, f"touch {marker}"),
}


def _evil_scvi_dir(folder: Path, marker: Path, kind="open") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": {}, "attr_dict": PAYLOADS[kind](marker)}, folder / "model.pt")
    return folder


def _set_scvi_source(model: Path, spec: str) -> None:
    setup = json.loads((model / "spatial_setup.json").read_text())
    setup["sources"] = [spec]
    (model / "spatial_setup.json").write_text(json.dumps(setup))


# ============================================================================ code execution
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_crafted_scvi_source_in_a_model_runs_nothing(work, tmp_path, capsys, kind):
    slide, model = work
    marker = tmp_path / "pwned"
    _evil_scvi_dir(model / "sources" / "source_0", marker, kind)
    _set_scvi_source(model, "scvi:sources/source_0")
    before = _snapshot(tmp_path)
    code, _, err = _run(["predict", model, slide, "--output", tmp_path / "o.h5ad"], capsys)
    _one_line_error(code, err, "--trust-pickle", "refused")
    assert not marker.exists()
    assert _snapshot(tmp_path) == before and not (tmp_path / "o.h5ad").exists()


@pytest.mark.slow
def test_crafted_scvi_source_real_command(work, tmp_path):
    """The same attack through the installed entry point, in a process of its own."""
    slide, model = work
    marker = tmp_path / "pwned"
    _evil_scvi_dir(model / "sources" / "source_0", marker, "os.system")
    _set_scvi_source(model, "scvi:sources/source_0")
    before = _snapshot(tmp_path)
    run = _predict_in_a_new_process(model, slide, tmp_path / "o.h5ad")
    _one_line_error(run.returncode, run.stderr, "--trust-pickle")
    assert not marker.exists() and _snapshot(tmp_path) == before


def test_scvi_source_load_runs_nothing_unless_trusted(tmp_path):
    marker = tmp_path / "pwned"
    folder = _evil_scvi_dir(tmp_path / "scvi", marker)
    with pytest.raises(ScResidualError, match="trust_pickle=True") as info:
        ScviSource.load(folder)
    assert "\n" not in str(info.value) and not marker.exists()
    # The payload is real: trusting the file runs it (and the load then fails on its content).
    with pytest.raises(ScResidualError, match="no scvi-tools model attributes"):
        ScviSource.load(folder, trust_pickle=True)
    assert marker.exists()


def _fake_geneformer(folder: Path) -> Path:
    """A Geneformer folder as far as load() checks before reading the dictionaries."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize("which", ["token_dictionary", "gene_median_dictionary"])
def test_crafted_geneformer_dictionaries_run_nothing(tmp_path, which):
    marker = tmp_path / "pwned"
    folder = _fake_geneformer(tmp_path / "gf")
    good = {
        "token_dictionary": {"<pad>": 0, "ENSG1": 1},
        "gene_median_dictionary": {"ENSG1": np.float32(1.5)},
    }
    for name, value in good.items():
        payload = {"ENSG1": PAYLOADS["os.system"](marker)} if name == which else value
        (folder / f"{name}_x.pkl").write_bytes(pickle.dumps(payload))
    with pytest.raises(ScResidualError, match="refused") as info:
        GeneformerSource.load(folder)
    assert "\n" not in str(info.value) and not marker.exists()


def test_geneformer_dictionaries_are_not_taken_from_around_the_folder(tmp_path):
    folder = _fake_geneformer(tmp_path / "models" / "gf")
    for name in ("token_dictionary_x.pkl", "gene_median_dictionary_x.pkl"):
        (tmp_path / "models" / name).write_bytes(pickle.dumps({"<pad>": 0}))
    with pytest.raises(ScResidualError, match="found none"):
        GeneformerSource.load(folder)


def test_plain_pickles_with_numpy_values_still_load(tmp_path):
    from scresidual._safe_load import read_plain_pickle

    data = {"ENSG1": np.float32(1.5), "<pad>": 0, "x": [1, "a", (2.0, None, b"b")]}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"d{protocol}.pkl"
        path.write_bytes(pickle.dumps({**data, "a": np.arange(3)}, protocol=protocol))
        got = read_plain_pickle(path, what="d", fix="f")
        assert got.pop("a").tolist() == [0, 1, 2] and got == data


def test_crafted_cifar_batches_run_nothing(tmp_path):
    from scresidual.image import load_cifar

    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(
        pickle.dumps(
            {b"data": np.zeros((1, 3072), np.uint8), b"labels": PAYLOADS["os.system"](marker)}
        )
    )
    with pytest.raises(ScResidualError, match="refused"):
        load_cifar(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("escape", ["dotdot", "absolute", "symlink"])
def test_setup_paths_stay_inside_the_model_folder(work, tmp_path, capsys, escape):
    slide, model = work
    marker = tmp_path / "pwned"
    outside = _evil_scvi_dir(tmp_path / "outside", marker)
    spec = {
        "dotdot": "scvi:../outside",
        "absolute": f"scvi:{outside}",
        "symlink": "scvi:sources/source_0",
    }[escape]
    if escape == "symlink":
        (model / "sources").mkdir()
        (model / "sources" / "source_0").symlink_to(outside)
    _set_scvi_source(model, spec)
    before = _snapshot(tmp_path)
    code, _, err = _run(["predict", model, slide, "--output", tmp_path / "o.h5ad"], capsys)
    _one_line_error(code, err, "outside")
    assert not marker.exists() and _snapshot(tmp_path) == before


@pytest.mark.parametrize("edit", ["members", "shape", "classes"])
def test_sizes_in_metadata_are_bounded_by_the_weights(work, tmp_path, capsys, edit):
    slide, model = work
    meta = json.loads((model / "residual_model.json").read_text())
    if edit == "members":
        meta["n_members"] = 1e9
    elif edit == "shape":
        meta["shapes"]["source_0"] = [10**9]
    else:
        meta["classes"] = [str(i) for i in range(10**5)]
    (model / "residual_model.json").write_text(json.dumps(meta))
    before = _snapshot(tmp_path)
    code, _, err = _run(["predict", model, slide, "--output", tmp_path / "o.h5ad"], capsys)
    _one_line_error(code, err, "refit")
    assert _snapshot(tmp_path) == before


# ============================================================================ data loss
def test_overwrite_refuses_a_folder_that_is_not_a_model(fitted, tmp_path, capsys):
    slide, _ = fitted
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(slide, folder / "slide.h5ad")
    (folder / "notes.txt").write_text("months of work")
    before = _snapshot(tmp_path)
    for target_input in (folder / "slide.h5ad", slide):
        code, _, err = _run(
            ["fit", target_input, "--model-dir", folder, "--overwrite", *FIT], capsys
        )
        _one_line_error(code, err, "not a scresidual model folder")
    assert _snapshot(tmp_path) == before


def test_overwrite_refuses_a_model_folder_holding_the_input(work, capsys):
    slide, model = work
    shutil.copy(slide, model / "slide.h5ad")
    before = _snapshot(model)
    code, _, err = _run(
        ["fit", model / "slide.h5ad", "--model-dir", model, "--overwrite", *FIT], capsys
    )
    _one_line_error(code, err, "holds the input")
    assert _snapshot(model) == before


def test_overwrite_replaces_a_model_folder(work, capsys):
    slide, model = work
    (model / "residual_model.pt").write_bytes(b"stale")
    code, _, err = _run(["fit", slide, "--model-dir", model, "--overwrite", *FIT], capsys)
    assert code == 0, err
    stale = model / "residual_model.pt"  # an exact fit has no weights file: the folder is new
    assert (model / "residual_model.json").is_file()
    assert not stale.exists() or stale.read_bytes() != b"stale"
    assert not list(model.parent.glob(".model.*.tmp"))


def test_without_overwrite_the_cli_names_its_flag(work, capsys):
    slide, model = work
    before = _snapshot(model)
    code, _, err = _run(["fit", slide, "--model-dir", model, *FIT], capsys)
    _one_line_error(code, err, "--overwrite")
    assert "overwrite=True" not in err and _snapshot(model) == before


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_model_dir_that_is_a_file_or_a_link(work, tmp_path, capsys, kind):
    slide, model = work
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("not a folder")
    else:
        target.symlink_to(model)
    before = _snapshot(tmp_path)
    code, _, err = _run(["fit", slide, "--model-dir", target, "--overwrite", *FIT], capsys)
    _one_line_error(code, err, "a file" if kind == "file" else "symbolic link")
    assert _snapshot(tmp_path) == before


def test_output_that_is_a_folder_or_the_input(work, tmp_path, capsys):
    slide, model = work
    folder = tmp_path / "out.h5ad"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    before = _snapshot(tmp_path)
    cases = [
        (["predict", model, slide, "--output", folder], "is a folder"),
        (["predict", model, slide, "--output", slide], "is the input"),
        (["predict", model, slide, "--output", model / "o.h5ad"], "inside the model folder"),
        (["fit", slide, "--model-dir", tmp_path / "new", "--output", slide, *FIT], "is the input"),
        (["fit", slide, "--model-dir", tmp_path / "new", "--output", folder, *FIT], "is a folder"),
    ]
    for argv, words in cases:
        code, _, err = _run(argv, capsys)
        _one_line_error(code, err, words)
    assert _snapshot(tmp_path) == before  # refused before training: no model folder either


def test_api_save_replaces_only_model_folders(work, tmp_path):
    _, model = work
    clf = SpatialRegionClassifier.load(model)
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    before = _snapshot(tmp_path)
    with pytest.raises(ScResidualError, match="not a scresidual model folder"):
        clf.save(folder, overwrite=True)
    with pytest.raises(ScResidualError, match="not a scresidual model folder"):
        clf.residual_model_.save(folder, overwrite=True)
    with pytest.raises(ScResidualError, match="overwrite=True"):
        clf.save(model)
    assert _snapshot(tmp_path) == before
    clf.save(model, overwrite=True)  # its own folder: replaced
    assert SpatialRegionClassifier.load(model).classes_ == clf.classes_


def test_interrupted_saves_are_cleaned_and_a_half_swapped_model_restored(work, tmp_path):
    _, model = work
    # A kill between the two renames: the old model is only in the temporary folder.
    half = tmp_path / ".model.abcd1234.tmp"
    half.mkdir()
    os.replace(model, half / ".old")
    stale = tmp_path / ".model.zzzz9999.tmp"
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "residual_model.pt").write_bytes(b"half written")
    foreign = tmp_path / ".model.qqqq1111.tmp"  # same name pattern, not ours: kept
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert SpatialRegionClassifier.load(model).classes_ == ["left", "right"]
    assert not half.exists() and not stale.exists()
    assert (foreign / "notes.txt").read_text() == "keep"


def test_a_running_save_is_never_removed(tmp_path):
    running = tmp_path / ".m.abcd1234.tmp"
    (running / "m").mkdir(parents=True)
    with _lock(running, wait=True):
        recover(tmp_path / "m")
        assert (running / "m").is_dir()
    recover(tmp_path / "m")
    assert not running.exists()


def test_atomic_path_never_replaces_a_foreign_folder(tmp_path):
    folder = tmp_path / "out.h5ad"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    with pytest.raises(ScResidualError, match="did not write"):
        with atomic_path(folder) as tmp:
            tmp.write_text("new")
    assert (folder / "keep.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5ad"]


# ============================================================================ one-line errors
def test_read_only_output_folder(work, tmp_path, capsys, monkeypatch):
    slide, model = work
    ro = tmp_path / "ro"
    ro.mkdir()
    digest = file_hash(slide)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: Path(p) != ro and real_access(p, m))
    code, _, err = _run(
        ["fit", slide, "--model-dir", tmp_path / "new", "--output", ro / "o.h5ad", *FIT], capsys
    )
    _one_line_error(code, err, "read-only")
    assert not (tmp_path / "new").exists()  # refused before training
    assert file_hash(slide) == digest


def test_os_errors_while_writing_are_one_line(work, tmp_path, capsys, monkeypatch):
    slide, model = work
    digest = file_hash(slide)

    def disk_full(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ad.AnnData, "write_h5ad", disk_full)
    code, _, err = _run(["predict", model, slide, "--output", tmp_path / "o.h5ad"], capsys)
    _one_line_error(code, err, "free some disk space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "slide.h5ad"]
    assert file_hash(slide) == digest

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr("scresidual._io.tempfile.mkdtemp", denied)
    code, _, err = _run(["predict", model, slide, "--output", tmp_path / "o.h5ad"], capsys)
    _one_line_error(code, err, "Permission denied")


@pytest.mark.parametrize("damage", ["truncated_npz", "npz_sizes", "setup_key", "setup_json"])
def test_damaged_model_folders(work, tmp_path, capsys, damage):
    slide, model = work
    npz = model / "features_0_pca.npz"
    if damage == "truncated_npz":
        npz.write_bytes(npz.read_bytes()[:100])
    elif damage == "npz_sizes":
        with np.load(npz) as d:
            arrays = dict(d)
        np.savez(npz, **{**arrays, "mean": arrays["mean"][:-1]})
    else:
        setup = json.loads((model / "spatial_setup.json").read_text())
        del setup["graph"]
        text = json.dumps(setup) if damage == "setup_key" else '{"labels_key": '
        (model / "spatial_setup.json").write_text(text)
    before = _snapshot(tmp_path)
    code, _, err = _run(["predict", model, slide, "--output", tmp_path / "o.h5ad"], capsys)
    _one_line_error(code, err, "refit")
    assert _snapshot(tmp_path) == before


def _write(a: ad.AnnData, path: Path) -> Path:
    a.write_h5ad(path)
    return path


@pytest.mark.parametrize(
    "edit, argv, words",
    [
        ("same_xy", ["--graph", "delaunay"], ["one line or at one point"]),
        ("one_cell", [], ["only 1 cell"]),
        ("no_cells", [], ["no cells"]),
        ("mixed_negative", [], ["negative", "--layer"]),
        ("nan_slide", ["--library-key", "slide"], ["no slide id"]),
        ("z_delaunay", ["--graph", "delaunay"], ["3-D"]),
    ],
)
def test_bad_training_slides(tmp_path, capsys, edit, argv, words):
    a = _slide()
    if edit == "same_xy":
        a.obsm["spatial"][:] = 5.0
    elif edit == "one_cell":
        a = a[:1].copy()
    elif edit == "no_cells":
        a = a[:0].copy()
    elif edit == "mixed_negative":
        a.X[0, 0] = -3
    elif edit == "nan_slide":
        a.obs["slide"] = np.where(np.arange(a.n_obs) < 5, None, "s1")
    elif edit == "z_delaunay":
        a.obsm["spatial"] = np.c_[a.obsm["spatial"], np.arange(a.n_obs) % 2]
    slide = _write(a, tmp_path / "slide.h5ad")
    digest = file_hash(slide)
    args = [a for a in FIT if a not in ("--graph", "knn:3")] if "--graph" in argv else FIT
    code, _, err = _run(["fit", slide, "--model-dir", tmp_path / "m", *args, *argv], capsys)
    _one_line_error(code, err, *words)
    assert file_hash(slide) == digest and not (tmp_path / "m").exists()


@pytest.mark.parametrize("edit, words", [("negative", ["negative"]), ("no_cells", ["no cells"])])
def test_bad_slides_at_predict(work, tmp_path, capsys, edit, words):
    _, model = work
    a = _slide(seed=1)
    if edit == "negative":
        a.X = a.X.copy()
        a.X.data[::3] = -2.0
    else:
        a = a[:0].copy()
    slide = _write(a, tmp_path / "new.h5ad")
    before = _snapshot(tmp_path)
    code, _, err = _run(["predict", model, slide, "--output", tmp_path / "o.h5ad"], capsys)
    _one_line_error(code, err, *words)
    assert _snapshot(tmp_path) == before


def test_non_utf8_obs(work, tmp_path, capsys):
    _, model = work
    slide = _write(_slide(), tmp_path / "bad.h5ad")
    with h5py.File(slide, "r+") as f:
        attrs = dict(f["obs/_index"].attrs)
        del f["obs/_index"]
        names = np.array([b"c\xff%d" % i for i in range(N_CELLS)], dtype="S")
        f["obs"].create_dataset("_index", data=names)
        f["obs/_index"].attrs.update(attrs)
    digest = file_hash(slide)
    code, _, err = _run(["predict", model, slide, "--output", tmp_path / "o.h5ad"], capsys)
    _one_line_error(code, err, "UTF-8")
    assert file_hash(slide) == digest


# ============================================================================ suspicious input
def test_3d_coordinates_keep_z_planes_apart():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10, (15, 2))
    a = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(30)]))
    a.obsm["spatial"] = np.c_[np.r_[xy, xy], np.r_[np.zeros(15), np.full(15, 1000.0)]]
    conn, _ = spatial_graph(a, graph="knn:3", copy=True)
    rows, cols = conn.nonzero()
    assert len(rows) and ((rows < 15) == (cols < 15)).all()  # z counted: no cross-plane edges


def test_counts_overflowing_float32_row_sums_still_give_features():
    a = _slide()
    a.X = a.X.toarray() * np.float32(1e37)  # row sums beyond float32's 3.4e38
    pca = PCAFeatures.fit(a, n_comps=3)
    Z = pca.transform(a)
    assert np.isfinite(Z).all() and Z.std(0).min() > 0


def test_one_log1p_normalisation_for_dense_sparse_and_given_totals():
    X = np.array([[1, 3, 0, 4], [0, 0, 0, 0], [2, 2, 4, 0]], dtype=np.float32)
    scaled = X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4  # empty cells stay zero
    S = sp.csr_matrix(X)
    np.testing.assert_allclose(log1p_normalise(X), np.log1p(scaled), rtol=1e-6)
    np.testing.assert_allclose(log1p_normalise(S).toarray(), np.log1p(scaled), rtol=1e-6)
    assert (S.toarray() == X).all()  # the input is not modified
    # scGPT scales the vocabulary genes by the totals over all genes
    part = log1p_normalise(X[:, :2], totals=X.sum(1), log=False)
    np.testing.assert_allclose(part, scaled[:, :2], rtol=1e-6)


def test_nan_strings_are_not_a_class(caplog):
    rng = np.random.default_rng(0)
    y = np.array(["a", "b"] * 30, dtype=object)
    y[:6] = ["nan", "NaN", "None", "nan", "NaN", "None"]
    X = (rng.normal(size=(60, 4)) + (y == "a")[:, None]).astype(np.float32)
    model = ResidualModel(
        arm="scratch",
        residuals={"x": ("mlp", {})},
        max_epochs=1,
        folds=1,
        progress=False,
        accelerator="cpu",
    )
    with caplog.at_level(logging.WARNING, logger="scresidual"):
        model.fit({"x": X}, y)
    assert model.classes_ == ["a", "b"]
    assert any("6 cell(s)" in r.message and r.levelno == logging.WARNING for r in caplog.records)


def test_low_gene_overlap_is_a_warning_quiet_does_not_hide(work, tmp_path):
    _, model = work
    a = _slide(seed=2)
    a = a[:, : int(N_GENES * 0.6)].copy()
    slide = _write(a, tmp_path / "few_genes.h5ad")
    run = _predict_in_a_new_process(model, slide, tmp_path / "o.h5ad")
    assert run.returncode == 0, run.stderr
    assert "only 60% (12/20)" in run.stderr, run.stderr


# ============================================================================ processes
def test_fold_workers_die_with_their_parent(tmp_path):
    script = textwrap.dedent("""
        import os, time
        from scresidual._process import worker_map
        def work(i):
            os.write(1, f"pid {os.getpid()}\\n".encode())  # one write: lines never interleave
            time.sleep(600)  # until its parent is killed
        worker_map(work, [(0,), (1,)], 2)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    workers = []
    while len(workers) < 2:  # other output (a library's blank line) is skipped
        line = parent.stdout.readline()
        assert line, "the parent exited before both workers started"
        if line.startswith("pid "):
            workers.append(int(line.split()[1]))
    assert all(_alive(w) for w in workers)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)


def test_worker_map_keeps_order_and_raises_the_workers_error():
    from scresidual._process import worker_map

    parent = os.getpid()
    out = worker_map(_square_elsewhere, [(i, parent) for i in range(5)], 2)
    assert out == [(i * i, True) for i in range(5)]  # in order, each in a worker
    with pytest.raises(ScResidualError, match="task 3"):
        worker_map(_fail_third, [(i,) for i in range(5)], 2)
    assert worker_map(_square_elsewhere, [(2, parent)], 4) == [(4, False)]  # one task: here


def _square_elsewhere(i: int, parent: int):
    return i * i, os.getpid() != parent


def _fail_third(i: int):
    return _fail(i) if i == 3 else i


def _fail(i: int):
    raise ScResidualError(f"task {i}")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# ============================================================================ downloads
def test_local_data_files_that_differ_from_the_official_ones_are_flagged(tmp_path, caplog):
    local = tmp_path / "adult.data"
    local.write_bytes(b"edited")
    with caplog.at_level(logging.WARNING, logger="scresidual"):
        assert _download.warn_if_modified(local, "0" * 64) == local
    assert "differs from the official file" in caplog.text


def test_downloads_https_only_with_timeout_and_checksums(tmp_path, monkeypatch):
    data = b"payload"
    good = _download.hashlib.sha256(data).hexdigest()
    with pytest.raises(ScResidualError, match="only https"):
        _download.fetch("http://example.org/f", tmp_path / "f", good)
    with pytest.raises(ScResidualError, match="only https"):
        _download.fetch("file:///etc/passwd", tmp_path / "f", good)
    local = tmp_path / "local"
    local.write_bytes(b"tampered")
    with pytest.raises(ScResidualError, match="expected"):
        _download.fetch("https://example.org/f", local, good)
    assert local.read_bytes() == b"tampered"  # a local file is checked, never replaced
    local.write_bytes(data)
    assert _download.fetch("https://example.org/f", local, good) == local

    seen = {}

    class Response:
        def __init__(self, body):
            self.body = body

        def read(self, n=-1):
            body, self.body = self.body, b""
            return body

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(url, timeout=None):
        seen["timeout"] = timeout
        return Response(data if "good" in url else b"evil")

    monkeypatch.setattr(_download.urllib.request, "urlopen", urlopen)
    assert _download.fetch("https://example.org/good", tmp_path / "new", good).read_bytes() == data
    assert seen["timeout"] == _download.TIMEOUT_S
    with pytest.raises(ScResidualError, match="checksum mismatch"):
        _download.fetch("https://example.org/bad", tmp_path / "bad", good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "new"]
