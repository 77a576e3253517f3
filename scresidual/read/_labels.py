"""Labels exported as a CSV of cell id → label (Loupe Browser, QuPath, napari, the widget)."""

from __future__ import annotations

import os

import pandas as pd

from .._labels_file import read_labels_csv


def labels(
    path: str | os.PathLike,
    *,
    id_column: str | None = None,
    label_column: str | None = None,
) -> pd.Series:
    """Read a labels CSV: a header row, a cell-id column and a label column.

    The format of the annotation widget's autosave and of the command line's
    ``--labels-csv``; Loupe Browser, QuPath and napari export it. Put the labels on a slide
    with ``adata.obs["region"] = sr.read.labels(path).reindex(adata.obs_names)``.

    Parameters
    ----------
    path
        The CSV file (UTF-8).
    id_column
        Column of cell ids (default: the first).
    label_column
        Column of labels (default: the second; required when the file has more than two).

    Returns
    -------
    Labels indexed by cell id (``str``); an empty label is ``NaN`` (unlabelled).

    """
    return read_labels_csv(path, id_column=id_column, label_column=label_column)
