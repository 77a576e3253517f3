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
