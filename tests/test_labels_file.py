import numpy as np
import pandas as pd
import pytest

from scresidual._errors import ScResidualError
from scresidual._labels_file import read_labels_csv, write_labels_csv


def test_written_labels_read_back_unlabelled_left_out(tmp_path):
    labels = pd.Series(
        ["follicle", np.nan, "medulla cords", "NA"], index=list("abcd"), name="region"
    )
    path = write_labels_csv(labels, tmp_path / "labels.csv")
    assert path.read_text().splitlines() == [
        "cell_id,region",
        "a,follicle",
        "c,medulla cords",
        "d,NA",
    ]
    back = read_labels_csv(path)
    assert back.name == "region"
    assert back.to_dict() == {"a": "follicle", "c": "medulla cords", "d": "NA"}


def test_empty_label_is_unlabelled_and_named_columns_of_a_wide_export(tmp_path):
    path = tmp_path / "qupath.csv"
    path.write_text("Object ID,Name,Classification\n1,x,Tumor\n2,y,\n")
    with pytest.raises(ScResidualError, match="3 columns .*label_column="):
        read_labels_csv(path)
    got = read_labels_csv(path, id_column="Object ID", label_column="Classification")
    assert got.index.tolist() == ["1", "2"]
    assert got["1"] == "Tumor" and pd.isna(got["2"])
    with pytest.raises(ScResidualError, match="label column 'Class' not in"):
        read_labels_csv(path, label_column="Class")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89HDF\r\n\x1a\n\x00\x00", "is not a labels CSV"),
        (b"Barcode\nA\n", "1 column"),
        (b"Barcode,cluster\nA,1\nA,2\n", "cell 'A' more than once"),
    ],
)
def test_files_that_are_not_labels_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "labels.csv"
    path.write_bytes(content)
    with pytest.raises(ScResidualError, match=message) as info:
        read_labels_csv(path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == content


def test_missing_file_says_not_found(tmp_path):
    with pytest.raises(ScResidualError, match="labels file not found"):
        read_labels_csv(tmp_path / "none.csv")
