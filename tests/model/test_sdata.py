"""SpatialData out: predictions written into a .zarr store's table from the command line."""

import hashlib
from pathlib import Path

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


def test_cli_fit_and_predict_write_into_a_zarr_table(zarr_store, tmp_path, capsys):
    before = _tree_hashes(zarr_store)
    assert any(k.startswith("shapes/spots/") for k in before)
    model = tmp_path / "model"
    code = main(
        ["fit", str(zarr_store), "--labels-key", "train", "--model-dir", str(model), "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    code = main(["predict", str(model), str(zarr_store), "--output", str(zarr_store), "--quiet"])
    assert code == 0, capsys.readouterr().err
    sdata = spatialdata.read_zarr(zarr_store)
    table = sdata.tables["table"]
    for k in ("train_pred", "train_uncertainty", "train_set", "train_set_size"):
        assert k in table.obs, k
    assert table.obsm["train_proba"].shape == (table.n_obs, len(table.uns["train_proba_classes"]))
    truth = table.obs["region"].astype(str).to_numpy()
    assert (table.obs["train_pred"].astype(str).to_numpy() == truth).mean() > 0.6
    assert table.uns["train_calibration"]["calibrated"]
    assert _tree_hashes(zarr_store) == before  # the other elements are byte-identical
    assert list(sdata.shapes) == ["spots"]
