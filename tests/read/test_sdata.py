"""SpatialData in: a .zarr store without a usable table is refused in one line."""

import pytest

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
