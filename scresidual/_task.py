"""A modality's data set as arrays: what the REFINE arms, and the paper's stress tests, need.

The image, text and tabular pipelines build a :class:`StressTask`; :mod:`scresidual.stress`
corrupts its source split and fits the arms on it. It lives below both, so that the
pipelines never import the harness that uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import ScResidualError


@dataclass
class StressTask:
    """One data set prepared for the stress test.

    Parameters
    ----------
    modality, dataset, metric
        Names written into each result record; ``metric`` is one of :data:`METRICS`.
    n_classes
        Number of classes (labels are codes ``0 … n_classes - 1``).
    source_x, source_y
        The source pool: inputs of the source model and clean labels.
    target_x, target_y, target_r
        Labelled target split: source-model inputs, labels, residual-encoder inputs.
    test_x, test_y, test_r
        Test split, likewise.
    pretrain
        ``pretrain(x, y, seed) -> SourceClassifier`` trained on a (corrupted) source split.
    encoder
        Residual encoder ``(name, kwargs)``.
    pairs
        Class pairs of the confusion setting.
    other
        ``(x, y)`` of another data set for the mismatch setting (None: setting skipped).
    fit_options
        Training options of :class:`~scresidual.model.ResidualConfig`.

    """

    modality: str
    dataset: str
    metric: str
    n_classes: int
    source_x: np.ndarray
    source_y: np.ndarray
    target_x: np.ndarray
    target_y: np.ndarray
    target_r: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_r: np.ndarray
    pretrain: Callable[[np.ndarray, np.ndarray, int], Any]  # -> sources.SourceClassifier
    encoder: tuple[str, dict]
    pairs: Sequence[tuple[int, int]] = ((0, 1),)
    other: tuple[np.ndarray, np.ndarray] | None = None
    fit_options: dict = field(default_factory=dict)


def split_indices(n: int, sizes: Sequence[int], *, seed: int = 0) -> list[np.ndarray]:
    """Disjoint random row sets of the given sizes, scaled down together when ``n`` is short."""
    sizes = [int(s) for s in sizes]
    if sum(sizes) > n:
        sizes = [max(1, s * n // sum(sizes)) for s in sizes]
    if n < len(sizes) or sum(sizes) > n:
        raise ScResidualError(
            f"only {n} rows for {len(sizes)} splits; every split would be empty: give more data."
        )
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *sizes])
    return [np.sort(perm[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
