"""Seeded corruptions of a source training split, as in the paper's stress tests.

Each function takes integer class codes ``0 … n_classes - 1`` and a ``seed`` and returns new
arrays (inputs are never modified), so a setting is reproducible from its seed alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._docs import doc_params, doc_seed
from .._errors import ScResidualError
from .._validate import check_labels

IMBALANCE = (0.35, 0.30, 0.10, 0.07, 0.06, 0.045, 0.03, 0.02, 0.015, 0.01)
"""Class proportions of the imbalance setting (class ``k`` gets the ``k``-th; renormalised)."""


@doc_params(doc_seed=doc_seed)
def flip_labels(y, rate: float, *, n_classes: int | None = None, seed: int = 0) -> np.ndarray:
    """Flip ``round(rate * n)`` labels, each to a uniformly drawn *different* class.

    Parameters
    ----------
    y
        Integer class codes.
    rate
        Fraction of labels to flip, in ``[0, 1]``.
    n_classes
        Number of classes (default ``max(y) + 1``).
    seed
        {doc_seed}

    Returns
    -------
    The noisy labels.

    """
    y = check_labels(y, n_classes)
    k = int(n_classes or y.max() + 1)
    if not 0 <= rate <= 1:
        raise ScResidualError(f"flip rate must be in [0, 1], got {rate}.")
    if k < 2:
        raise ScResidualError("label flips need at least 2 classes.")
    rng = np.random.default_rng(seed)
    out = y.copy()
    rows = rng.choice(len(y), size=int(round(rate * len(y))), replace=False)
    out[rows] = (y[rows] + rng.integers(1, k, size=len(rows))) % k  # never the same class
    return out


@doc_params(doc_seed=doc_seed)
def confuse_classes(
    x,
    y,
    pairs: Sequence[tuple[int, int]],
    *,
    p: float = 0.5,
    noise: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Semantic confusion: swap the labels of class pairs with probability ``p``, add noise.

    Parameters
    ----------
    x
        Inputs, samples on the first axis (numeric).
    y
        Integer class codes.
    pairs
        Class pairs ``(a, b)`` whose members are confused with each other.
    p
        Probability that a sample of a paired class gets the other member's label.
    noise
        Standard deviation of the Gaussian input noise, in units of ``x``'s overall std.
    seed
        {doc_seed}

    Returns
    -------
    The noisy inputs (float32) and the confused labels.

    """
    y = check_labels(y)
    rng = np.random.default_rng(seed)
    out = y.copy()
    swap = rng.random(len(y)) < p
    for a, b in pairs:
        out[swap & (y == a)] = b
        out[swap & (y == b)] = a
    x = np.asarray(x, dtype=np.float32)
    x = x + rng.normal(0.0, noise * float(x.std()), size=x.shape).astype(np.float32)
    return x, out


@doc_params(doc_seed=doc_seed)
def imbalance_indices(y, proportions: Sequence[float] = IMBALANCE, *, seed: int = 0) -> np.ndarray:
    """Rows of a subsample whose class ``k`` makes up ``proportions[k]`` (renormalised).

    The subsample is the largest one the available rows allow.

    Parameters
    ----------
    y
        Integer class codes.
    proportions
        Target share of each class, at least one per class.
    seed
        {doc_seed}

    Returns
    -------
    Sorted row indices.

    """
    y = check_labels(y)
    k = int(y.max()) + 1
    if len(proportions) < k:
        raise ScResidualError(f"need {k} proportions, got {len(proportions)}; give one per class.")
    share = np.asarray(proportions[:k], dtype=float)
    share /= share.sum()
    counts = np.bincount(y, minlength=k)
    total = min(counts[c] / share[c] for c in range(k))
    rng = np.random.default_rng(seed)
    keep = [
        rng.choice(np.flatnonzero(y == c), size=max(1, int(share[c] * total)), replace=False)
        for c in range(k)
        if counts[c]
    ]
    return np.sort(np.concatenate(keep))


@doc_params(doc_seed=doc_seed)
def domain_mismatch(x_other, y_other, n: int, *, n_classes: int, seed: int = 0):
    """A source split drawn from *another* data set, its labels folded onto ``n_classes``.

    Parameters
    ----------
    x_other, y_other
        Inputs and integer labels of the other data set (same input shape as the target).
    n
        Number of rows (all of them when fewer are available).
    n_classes
        Classes of the target task; other labels map to ``label % n_classes``.
    seed
        {doc_seed}

    Returns
    -------
    Inputs and labels of the mismatched source split.

    """
    y_other = check_labels(y_other)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(y_other), size=min(n, len(y_other)), replace=False))
    return np.asarray(x_other)[rows], y_other[rows] % n_classes
