"""Text pipeline: frozen all-MiniLM-L6-v2 + a small source classifier; a word-vector residual.

The source model is the frozen sentence encoder followed by a small MLP classifier trained
on a (corrupted) source split; its penultimate layer is the ``source`` view. Without a
classifier, the sentence embeddings themselves can serve as the frozen source view.

The residual reads each text on its own terms: the mean of its word-piece vectors (the
encoder's input table, none of its layers; :class:`StaticTokenEmbedding`), into an MLP
trained on the target labels. Hashed TF-IDF n-grams (:class:`HashedTfidf`) fit the same
slot but learn little from 400 reviews (about .54 macro-F1 alone, against .67 here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .._task import StressTask, split_indices
from ..sources import SourceClassifier, pretrain_mlp_source
from ._data import SentenceEncoder, StaticTokenEmbedding, load_rotten_tomatoes

RESIDUAL_ENCODER = ("mlp", {"n_hidden": [64], "n_out": 32, "dropout": 0.3})
"""Default residual encoder on the residual text features."""


class TextFeatures(Protocol):
    """Turns texts into the residual's input: ``fit(target texts)``, then ``transform``."""

    def fit(self, texts: Sequence[str]) -> TextFeatures: ...

    def transform(self, texts: Sequence[str]) -> np.ndarray: ...


def pretrain_text_source(
    embeddings, y, *, n_classes: int, epochs: int = 30, seed: int = 0
) -> SourceClassifier:
    """Train the small classifier on frozen sentence embeddings ``(n, d)``."""
    return pretrain_mlp_source(
        embeddings, y, n_classes=n_classes, n_hidden=256, n_out=128, epochs=epochs, seed=seed
    )


def rotten_tomatoes_task(
    data_dir: str | Path,
    *,
    quick: bool = False,
    encoder: Callable[[Sequence[str]], np.ndarray] | None = None,
    residual_features: TextFeatures | None = None,
) -> StressTask:
    """Rotten Tomatoes fresh vs rotten ('plot' dropped).

    Source pool 4,000 reviews, target 400 labelled reviews, test 3,000 reviews (disjoint);
    the mismatch setting's source is trained to tell plot synopses from reviews.

    ``encoder`` maps texts to the source's input embeddings (default
    :class:`SentenceEncoder`); ``residual_features`` makes the residual's input, fitted on
    the labelled target texts only (default :class:`StaticTokenEmbedding`).
    """
    texts, y, _, plot = load_rotten_tomatoes(data_dir)
    sizes = (600, 400, 600) if quick else (4000, 400, 3000)
    src, tgt, test = split_indices(len(y), sizes, seed=0)
    rng = np.random.default_rng(0)
    n_plot = min(len(plot), len(src) // 2)
    plot_rows = np.sort(rng.choice(len(plot), size=n_plot, replace=False))
    encode = encoder or SentenceEncoder()
    emb = encode([texts[i] for i in np.concatenate([src, tgt, test])])
    e_src, e_tgt, e_test = np.split(emb, np.cumsum([len(src), len(tgt)]))
    e_plot = encode([plot[i] for i in plot_rows])
    # Mismatch: a source trained to tell plot synopses (0) from reviews (1).
    other = (
        np.concatenate([e_plot, e_src[:n_plot]]),
        np.repeat(np.array([0, 1], dtype=np.int64), n_plot),
    )
    features = (residual_features or StaticTokenEmbedding()).fit([texts[i] for i in tgt])
    return StressTask(
        modality="text",
        dataset="rotten_tomatoes",
        metric="macro_f1",
        n_classes=2,
        source_x=e_src,
        source_y=y[src],
        target_x=e_tgt,
        target_y=y[tgt],
        target_r=features.transform([texts[i] for i in tgt]),
        test_x=e_test,
        test_y=y[test],
        test_r=features.transform([texts[i] for i in test]),
        pretrain=lambda x, yy, seed: pretrain_text_source(
            x, yy, n_classes=2, epochs=10 if quick else 30, seed=seed
        ),
        encoder=RESIDUAL_ENCODER,
        other=other,
        # quick: one validation split instead of five cross-fitted members
        fit_options={
            "max_epochs": 30 if quick else 100,
            "patience": 8 if quick else 15,
            "batch_size": 64,
            "folds": 1 if quick else None,
        },
    )


def stress_tasks(data_dir: str | Path, *, quick: bool = False) -> list[StressTask]:
    """The text stress tasks (Rotten Tomatoes)."""
    return [rotten_tomatoes_task(data_dir, quick=quick)]
