"""sr.read.labels: the labels CSV that the widget's autosave writes and exports share."""

import numpy as np
import pandas as pd
import pytest

from scresidual import ScResidualError, read
from scresidual._labels_file import write_labels_csv


def test_reads_what_the_autosave_writes(tmp_path):
    labels = pd.Series(["cortex", None, "medulla"], index=["c1", "c2", "c3"], name="region")
    write_labels_csv(labels, tmp_path / "labels.csv")
    back = read.labels(tmp_path / "labels.csv")
    assert back.name == "region" and list(back.index) == ["c1", "c3"]
    assert list(back) == ["cortex", "medulla"]


def test_an_export_with_more_columns_names_its_label_column(tmp_path):
    pd.DataFrame({"Barcode": ["a", "b"], "Graph-based": ["1", "2"], "region": ["x", ""]}).to_csv(
        tmp_path / "loupe.csv", index=False
    )
    with pytest.raises(ScResidualError, match="name the label column"):
        read.labels(tmp_path / "loupe.csv")
    got = read.labels(tmp_path / "loupe.csv", label_column="region")
    assert got["a"] == "x" and np.isnan(got["b"])
