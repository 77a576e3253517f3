"""`scresidual predict --tile-size`: tiles with a halo, from a .zarr store and a backed .h5ad."""

import shutil

import anndata as ad
import numpy as np
import pytest

from scresidual.cli import main
from scresidual.read import spatialdata as read_table

spatialdata = pytest.importorskip("spatialdata")


def test_predict_over_tiles_matches_the_whole_slide(zarr_store, tmp_path, capsys):
    store = tmp_path / "slide.zarr"
    shutil.copytree(zarr_store, store)
    model = tmp_path / "model"
    fit = ["fit", str(store), "--labels-key", "train", "--graph", "knn:6"]
    assert main([*fit, "--model-dir", str(model), "--quiet"]) == 0, capsys.readouterr().err
    whole, tiled = tmp_path / "whole.zarr", tmp_path / "tiled.zarr"
    assert main(["predict", str(model), str(store), "--output", str(whole), "--quiet"]) == 0
    code = main(
        [
            "predict",
            str(model),
            str(store),
            "--output",
            str(tiled),
            "--tile-size",
            "1000",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    a = spatialdata.read_zarr(whole).tables["table"].obs["train_pred"].to_numpy()
    b = spatialdata.read_zarr(tiled).tables["table"].obs["train_pred"].to_numpy()
    assert (a == b).mean() >= 0.99  # k-NN ties on this hexagonal grid may break differently

    h5ad, out = tmp_path / "slide.h5ad", tmp_path / "out.h5ad"
    read_table(store).write_h5ad(h5ad)  # with the coordinates in obsm
    code = main(
        ["predict", str(model), str(h5ad), "--output", str(out), "--tile-size", "1000", "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    assert (ad.read_h5ad(out).obs["train_pred"].to_numpy() == b).all()


@pytest.mark.slow  # the client waits 10 s for the scheduler
def test_unreachable_scheduler_is_one_line(zarr_store, tmp_path, capsys):
    model = tmp_path / "model"
    fit = ["fit", str(zarr_store), "--labels-key", "train", "--model-dir", str(model), "--quiet"]
    assert main(fit) == 0
    out = tmp_path / "out.zarr"
    code = main(
        [
            "predict",
            str(model),
            str(zarr_store),
            "--output",
            str(out),
            "--scheduler",
            "tcp://127.0.0.1:1",
            "--quiet",
        ]
    )
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "--scheduler" in err[-1] and "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_fit_over_tiles_gives_the_whole_slide_model(zarr_store, tmp_path, capsys):
    # a radius graph: k-NN ties on this hexagonal grid could break differently on a tile
    fit = ["fit", str(zarr_store), "--labels-key", "train", "--graph", "radius:150", "--quiet"]
    whole, tiled = tmp_path / "whole", tmp_path / "tiled"
    assert main([*fit, "--model-dir", str(whole)]) == 0, capsys.readouterr().err
    code = main([*fit, "--model-dir", str(tiled), "--tile-size", "1000", "--n-jobs", "2"])
    assert code == 0, capsys.readouterr().err
    tables = []
    for model in (whole, tiled):
        out = tmp_path / f"{model.name}.zarr"
        assert main(["predict", str(model), str(zarr_store), "--output", str(out), "--quiet"]) == 0
        tables.append(spatialdata.read_zarr(out).tables["table"])
    np.testing.assert_allclose(
        tables[1].obsm["train_proba"], tables[0].obsm["train_proba"], atol=1e-4
    )
    assert (tables[0].obs["train_pred"] == tables[1].obs["train_pred"]).all()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--output", "out.zarr"], "--output is not available with --tile-size"),
        (["--tile-size", "0"], "--tile-size must be a positive number"),
        (["--labels-key", "nope"], "--labels-key: obs key 'nope' not found"),
        (["--features", "neighbourhood-pca"], "use --features pca"),
    ],
)
def test_tiled_fit_bad_input_is_one_line(zarr_store, tmp_path, capsys, extra, message):
    model = tmp_path / "model"
    fit = ["fit", str(zarr_store), "--labels-key", "train", "--model-dir", str(model)]
    code = main([*fit, "--tile-size", "1000", *extra, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not model.exists()
