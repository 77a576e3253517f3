"""SpatialData in and out: a .zarr store labelled from the command line."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from scresidual.cli import main

spatialdata = pytest.importorskip("spatialdata")


def _tree_hashes(store: Path) -> dict[str, str]:
    """Hash of every file of a store outside its tables and consolidated metadata."""
    skip = {"zarr.json", ".zmetadata", ".zgroup", ".zattrs"}
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file()
        and p.relative_to(store).parts[0] != "tables"
        and not (p.parent == store and p.name in skip)
    }


@pytest.fixture(scope="module")
def store(small_slides, tmp_path_factory):
    """A SpatialData with a table annotating circles (one per spot), written to .zarr."""
    import geopandas as gpd
    from shapely.geometry import Point
    from spatialdata.models import ShapesModel, TableModel

    a = small_slides[small_slides.obs["slide"] == "slide1"].copy()
    rng = np.random.default_rng(0)
    a.obs["train"] = a.obs["region"].astype(object).where(rng.random(a.n_obs) < 0.5, None)
    xy = a.obsm.pop("spatial")
    circles = gpd.GeoDataFrame(
        {"radius": np.full(a.n_obs, 0.5)},
        geometry=[Point(x, y) for x, y in xy],
        index=np.arange(a.n_obs),
    )
    shapes = ShapesModel.parse(circles)
    a.obs["spots"] = "spots"
    a.obs["instance"] = np.arange(a.n_obs)
    a.obs = a.obs.astype({"train": "category", "region": "category"})
    table = TableModel.parse(a, region="spots", region_key="spots", instance_key="instance")
    sdata = spatialdata.SpatialData(shapes={"spots": shapes}, tables={"table": table})
    path = tmp_path_factory.mktemp("sd") / "slide.zarr"
    sdata.write(path)
    return path


def test_cli_fit_and_predict_write_into_a_zarr_table(store, tmp_path, capsys):
    before = _tree_hashes(store)
    assert any(k.startswith("shapes/spots/") for k in before)
    model = tmp_path / "model"
    code = main(["fit", str(store), "--labels-key", "train", "--model-dir", str(model), "--quiet"])
    assert code == 0, capsys.readouterr().err
    code = main(["predict", str(model), str(store), "--output", str(store), "--quiet"])
    assert code == 0, capsys.readouterr().err
    sdata = spatialdata.read_zarr(store)
    table = sdata.tables["table"]
    for k in ("train_pred", "train_uncertainty", "train_set", "train_set_size"):
        assert k in table.obs, k
    assert table.obsm["train_proba"].shape == (table.n_obs, len(table.uns["train_proba_classes"]))
    truth = table.obs["region"].astype(str).to_numpy()
    assert (table.obs["train_pred"].astype(str).to_numpy() == truth).mean() > 0.6
    assert table.uns["train_calibration"]["calibrated"]
    assert _tree_hashes(store) == before  # the other elements are byte-identical
    assert list(sdata.shapes) == ["spots"]


def test_zarr_without_a_usable_table_fails_in_one_line(store, tmp_path, capsys):
    empty = tmp_path / "empty.zarr"
    spatialdata.SpatialData(shapes=dict(spatialdata.read_zarr(store).shapes)).write(empty)
    code = main(
        ["fit", str(empty), "--labels-key", "train", "--model-dir", str(tmp_path / "m"), "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "table" in err
