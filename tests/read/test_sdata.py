"""SpatialData in: a table's coordinates from its instances; unusable stores in one line."""

import numpy as np
import pytest

from scresidual import ScResidualError, read
from scresidual.cli import main

spatialdata = pytest.importorskip("spatialdata")


def test_zarr_without_a_usable_table_fails_in_one_line(zarr_store, tmp_path, capsys):
    empty = tmp_path / "empty.zarr"
    spatialdata.SpatialData(shapes=dict(spatialdata.read_zarr(zarr_store).shapes)).write(empty)
    code = main(
        ["fit", str(empty), "--labels-key", "train", "--model-dir", str(tmp_path / "m"), "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "table" in err


def test_table_coordinates_are_the_centroids_of_its_instances(zarr_store):
    sdata = spatialdata.read_zarr(zarr_store)
    adata = read.spatialdata(sdata)
    spots = sdata.shapes["spots"].geometry
    np.testing.assert_allclose(adata.obsm["spatial"], np.c_[spots.x, spots.y])
    table = sdata.tables["table"]
    table.obs["instance"] = table.obs["instance"].to_numpy() + 1  # the last row has no instance
    n = table.n_obs
    with pytest.raises(ScResidualError, match=f"1 of {n} cells lack a row .*element 'spots'"):
        read.spatialdata(sdata)
    table.obs["instance"] = 0  # every row names the same instance: fine
    assert read.spatialdata(sdata).obsm["spatial"][:, 0].std() == 0


def test_a_table_with_its_own_coordinates_needs_no_annotated_element(
    small_slides, tmp_path, capsys
):
    from spatialdata.models import TableModel

    a = small_slides[small_slides.obs["slide"] == "slide1"].copy()
    a.obs["train"] = a.obs["region"].astype(object).where(np.arange(a.n_obs) % 3 == 0)
    a.obs = a.obs.astype({"train": "category"})
    store = tmp_path / "table_only.zarr"
    spatialdata.SpatialData(tables={"table": TableModel.parse(a)}).write(store)
    adata = read.spatialdata(store)
    np.testing.assert_allclose(adata.obsm["spatial"], a.obsm["spatial"])
    argv = ["fit", str(store), "--labels-key", "train", "--model-dir", str(tmp_path / "m")]
    assert main([*argv, "--output", str(store), "--quiet"]) == 0, capsys.readouterr().err
    table = spatialdata.read_zarr(store).tables["table"]
    assert table.obs["train_pred"].notna().all()
