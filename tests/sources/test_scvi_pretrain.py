"""pretrain_scvi: reruns, early stopping, and no scvi-tools warning on any sparse format."""

import logging
import warnings

import pytest
import scipy.sparse as sp

from scresidual._errors import ScResidualError
from scresidual.sources import pretrain_scvi


def test_an_existing_folder_is_replaced_only_with_overwrite(small_slides, tmp_path):
    a = small_slides[:150].copy()
    pretrain_scvi(a, tmp_path / "m", max_epochs=1, progress=False)
    before = (tmp_path / "m" / "model.pt").stat().st_mtime_ns
    with pytest.raises(ScResidualError, match=r"exists; pass overwrite=True"):
        pretrain_scvi(a, tmp_path / "m", max_epochs=1, progress=False)
    assert (tmp_path / "m" / "model.pt").stat().st_mtime_ns == before
    pretrain_scvi(a, tmp_path / "m", max_epochs=1, overwrite=True, progress=False)
    assert (tmp_path / "m" / "model.pt").stat().st_mtime_ns != before


def test_stops_early_and_says_how_many_epochs(small_slides, tmp_path, caplog):
    a = small_slides[:150].copy()
    a.X = sp.csc_matrix(a.X)  # scvi-tools warns about any format but CSR
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with caplog.at_level(logging.INFO, logger="scresidual"):
            pretrain_scvi(a, tmp_path / "m", max_epochs=300, progress=False)
    [line] = [r.getMessage() for r in caplog.records if "scVI trained" in r.getMessage()]
    trained = int(line.split("for ")[1].split(" of")[0])
    assert trained < 300 and "early-stopped" in line
    assert not [w for w in caught if "scvi" in str(w.filename)], [str(w.message) for w in caught]
