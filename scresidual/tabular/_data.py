"""Tabular data: UCI Adult and German credit, and a one-hot/standardising column encoder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._download import fetch, locate, warn_if_modified
from .._errors import ScResidualError

UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/"
ADULT_FILES = {
    "adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    "adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
}
GERMAN_SHA256 = "b21f3d81db8071257d5ff1deaeba1fd4303b62712e6fcc9715c7a86202cb5871"
ADULT_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
)
ADULT_CATEGORICAL = (
    "workclass",
    "education",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native_country",
)
GERMAN_COLUMNS = tuple(f"A{i}" for i in range(1, 21))
GERMAN_NUMERIC = ("A2", "A5", "A8", "A11", "A13", "A16", "A18")
GERMAN_CATEGORICAL = tuple(c for c in GERMAN_COLUMNS if c not in GERMAN_NUMERIC)


def _find(root, name: str, sha256: str, url: str, download) -> Path:
    path = locate(root, (name,), ("tabular",))
    if path is not None:
        return warn_if_modified(path, sha256)
    if download is not None:
        path = fetch(url, Path(download) / name, sha256)
    if path is None:
        raise ScResidualError(f"no {name} in {root}; put the UCI file there or pass download=.")
    return path


def load_adult(
    root: str | Path, split: str = "train", *, download: str | Path | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """UCI Adult census income: features and labels (1 = income over 50K).

    Parameters
    ----------
    root
        Folder with ``adult.data`` / ``adult.test`` (also looked for under ``root/tabular``).
    split
        ``"train"`` (adult.data) or ``"test"`` (adult.test).
    download
        Folder to download the original UCI files into (checked by sha256) when not found.

    Returns
    -------
    A data frame of the 14 attributes (missing values as ``"?"``) and int64 labels.

    """
    if split not in ("train", "test"):
        raise ScResidualError(f"unknown split {split!r}; use 'train' or 'test'.")
    name = "adult.data" if split == "train" else "adult.test"
    path = _find(root, name, ADULT_FILES[name], UCI + "adult/" + name, download)
    df = pd.read_csv(
        path,
        header=None,
        names=[*ADULT_COLUMNS, "income"],
        skipinitialspace=True,
        comment="|",
        skip_blank_lines=True,
    ).dropna(subset=["income"])
    income = df.pop("income").astype(str).str.rstrip(".")
    bad = set(income) - {"<=50K", ">50K"}
    if bad:
        raise ScResidualError(f"{path}: unexpected income labels {sorted(bad)[:3]}; check it.")
    return df.reset_index(drop=True), (income == ">50K").to_numpy().astype(np.int64)


def load_german(
    root: str | Path, *, download: str | Path | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """UCI Statlog German credit (``german.data``): attributes ``A1 … A20``, 1 = bad credit."""
    path = _find(root, "german.data", GERMAN_SHA256, UCI + "statlog/german/german.data", download)
    df = pd.read_csv(path, sep=r"\s+", header=None, names=[*GERMAN_COLUMNS, "risk"])
    if df["risk"].isna().any() or not set(df["risk"]) <= {1, 2}:
        raise ScResidualError(f"{path}: the last column must be 1 (good) or 2 (bad); check it.")
    return df.drop(columns="risk"), (df["risk"].to_numpy() == 2).astype(np.int64)


class TabularEncoder:
    """Standardise numeric columns and one-hot encode categorical ones.

    Parameters
    ----------
    categorical
        Columns to one-hot encode; every other column must be numeric.

    """

    def __init__(self, categorical: Sequence[str] = ()):
        self.categorical = list(categorical)
        self.numeric_: list[str] = []
        self.levels_: dict[str, list[str]] = {}

    def fit(self, df: pd.DataFrame) -> TabularEncoder:
        """Learn the columns' statistics and categories."""
        if not len(df):
            raise ScResidualError("the table is empty; give at least one row.")
        missing = [c for c in self.categorical if c not in df.columns]
        if missing:
            raise ScResidualError(f"categorical columns {missing} are not in the table.")
        self.numeric_ = [c for c in df.columns if c not in self.categorical]
        text = [c for c in self.numeric_ if not pd.api.types.is_numeric_dtype(df[c])]
        if text:
            raise ScResidualError(
                f"columns {text[:5]} are not numeric; list them in categorical= or encode them."
            )
        num = df[self.numeric_].astype(float)
        self.mean_, self.std_ = num.mean().fillna(0.0), num.std().fillna(1.0).replace(0.0, 1.0)
        self.levels_ = {c: sorted(df[c].astype(str).unique()) for c in self.categorical}
        return self

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Encode rows into a float32 matrix (unknown categories give all-zero blocks)."""
        if not self.levels_ and not self.numeric_:
            raise ScResidualError("the encoder is not fitted; call fit() first.")
        missing = [c for c in [*self.numeric_, *self.categorical] if c not in df.columns]
        if missing:
            raise ScResidualError(f"columns {missing} are missing from the table.")
        num = ((df[self.numeric_].astype(float) - self.mean_) / self.std_).fillna(0.0)
        parts = [num.to_numpy(np.float32)]
        for c in self.categorical:
            cat = pd.Categorical(df[c].astype(str), categories=self.levels_[c])
            onehot = np.zeros((len(df), len(self.levels_[c])), dtype=np.float32)
            known = cat.codes >= 0
            onehot[np.flatnonzero(known), cat.codes[known]] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1)

    def fit_transform(self, df: pd.DataFrame) -> np.ndarray:
        """:meth:`fit` then :meth:`transform`."""
        return self.fit(df).transform(df)
