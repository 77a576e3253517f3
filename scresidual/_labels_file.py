"""The labels file: a CSV of cell id → label, read and written in one place.

One format serves the annotation widget's autosave and label import on the command line,
so each reads what the other writes. It is the two-column CSV that Loupe Browser, QuPath and
napari export: a header row, the cell id in the first column, the label in the second (its
header is the label's name). An empty label means "unlabelled". Other exports with more
columns are read by naming the two columns.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ._errors import ScResidualError, first_line
from ._io import atomic_write

ID_COLUMN = "cell_id"
"""Header of the id column in the files scresidual writes."""


def read_labels_csv(
    path: str | os.PathLike,
    *,
    id_column: str | None = None,
    label_column: str | None = None,
) -> pd.Series:
    """Read a labels CSV into a Series: index = cell ids (str), values = labels (NaN: none).

    ``id_column`` / ``label_column`` default to the first / second column; a file with more
    than two columns must name ``label_column``.
    """
    path = Path(path)
    fix = "pass a CSV with a header row, cell ids in one column and labels in another"
    if not path.is_file():
        raise ScResidualError(f"labels file not found: {path}; {fix}.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ScResidualError(
            f"{path} is not a labels CSV ({type(err).__name__}: {first_line(err)}); {fix}."
        ) from None
    columns = [str(c) for c in table.columns]
    if len(columns) < 2:
        raise ScResidualError(
            f"{path} has {len(columns)} column(s), not a labels CSV; {fix} (e.g. cell_id,region)."
        )
    id_column = columns[0] if id_column is None else id_column
    if label_column is None:
        if len(columns) > 2:
            shown = ", ".join(repr(c) for c in columns[:8]) + (", …" if len(columns) > 8 else "")
            raise ScResidualError(
                f"{path} has {len(columns)} columns ({shown}); name the label column "
                "with label_column= (command line: --labels-column)."
            )
        label_column = columns[1]
    for what, col in (("id", id_column), ("label", label_column)):
        if col not in table.columns:
            raise ScResidualError(
                f"{what} column {col!r} not in {path}; its columns: {', '.join(columns)}."
            )
    ids = table[id_column].str.strip()
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise ScResidualError(
            f"{path} lists cell {repeated.iloc[0]!r} more than once ({len(repeated)} repeats); "
            "keep one label per cell."
        )
    labels = pd.Series(
        table[label_column].str.strip().to_numpy(dtype=object),
        index=pd.Index(ids.to_numpy(), name=id_column),
        name=label_column,
    )
    return labels.mask(labels == "")


def write_labels_csv(labels: pd.Series, path: str | os.PathLike) -> Path:
    """Write the labelled entries of ``labels`` (index = cell ids) atomically to ``path``.

    Unlabelled cells (NaN / None) are left out: the file is a full snapshot of the labels, so
    restoring it sets every cell it does not list to unlabelled.
    """
    name = str(labels.name) if labels.name is not None else "label"
    kept = labels[labels.notna()]
    frame = pd.DataFrame({ID_COLUMN: kept.index.astype(str), name: kept.astype(str).to_numpy()})
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, encoding="utf-8"))
