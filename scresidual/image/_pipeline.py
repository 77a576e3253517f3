"""Image pipeline: a CNN source pretrained on a (corrupted) split, a small residual CNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._docs import doc_params, doc_seed
from .._download import locate
from .._task import StressTask, split_indices
from .._validate import check_labels
from ..module import CNNEncoder
from ..sources import SourceClassifier, pretrain_source, source_outputs
from ._data import FASHION_MNIST_CONFUSED, as_images, load_fashion_mnist, load_mnist_csv

RESIDUAL_ENCODER = ("cnn", {"widths": [16, 32], "n_out": 64})
"""Default residual encoder for images: two conv blocks, 64 features."""


@doc_params(doc_seed=doc_seed)
def pretrain_image_source(
    x, y, *, n_classes: int, epochs: int = 5, widths=(32, 64), seed: int = 0
) -> SourceClassifier:
    """Pretrain a CNN source (``CNNEncoder`` + linear head) on images ``(n, c, h, w)``.

    Parameters
    ----------
    x
        Images (uint8 or float in ``[0, 1]``).
    y
        Integer labels ``0 … n_classes - 1``.
    n_classes
        Number of classes.
    epochs
        Training epochs.
    widths
        Channels of the CNN blocks.
    seed
        {doc_seed}

    Returns
    -------
    The frozen source classifier.

    """
    from ..train import seed_all

    x = as_images(x)
    y = check_labels(y, n_classes)
    seed_all(seed)  # the backbone's initialisation too: same seed, same source
    backbone = CNNEncoder(x.shape[1], widths=widths, n_out=128)
    return pretrain_source(backbone, x, y, n_classes=n_classes, epochs=epochs, seed=seed)


def image_views(source: SourceClassifier, x) -> dict[str, np.ndarray]:
    """Views for :class:`~scresidual.model.ResidualModel` from a frozen source.

    ``source`` holds the penultimate features, ``teacher`` the source's logits and ``x`` the
    images scaled to ``[0, 1]`` (the residual CNN's input).
    """
    x = as_images(x, channels=source.backbone.features[0].in_channels)
    feats, logits = source_outputs(source, x)
    return {"source": feats, "teacher": logits, "x": x}


def fashion_mnist_task(data_dir: str | Path, *, quick: bool = False) -> StressTask:
    """Fashion-MNIST stress task.

    Source 10,000 train images, target 4,000 disjoint clean train images, test the full
    10,000 test images; the mismatch setting's source is the 5k-MNIST CSV (when present).
    """
    x, y = load_fashion_mnist(data_dir, "train")
    x_test, y_test = load_fashion_mnist(data_dir, "test")
    n_src, n_tgt, n_test = (2000, 500, 2000) if quick else (10_000, 4000, len(y_test))
    src, tgt = split_indices(len(y), [n_src, n_tgt], seed=0)
    test = split_indices(len(y_test), [min(n_test, len(y_test))], seed=0)[0]
    x, x_test = as_images(x), as_images(x_test)
    mnist = locate(data_dir, ("mnist_5k.csv.gz", "mnist_5k.csv"), ("image",))
    other = None
    if mnist is not None:
        xo, yo = load_mnist_csv(mnist)
        if xo.shape[2:] == x.shape[2:]:
            other = (as_images(xo), yo)
    return StressTask(
        modality="image",
        dataset="fashion_mnist",
        metric="accuracy",
        n_classes=10,
        source_x=x[src],
        source_y=y[src],
        target_x=x[tgt],
        target_y=y[tgt],
        target_r=x[tgt],
        test_x=x_test[test],
        test_y=y_test[test],
        test_r=x_test[test],
        pretrain=lambda xs, ys, seed: pretrain_image_source(
            xs, ys, n_classes=10, epochs=2 if quick else 3, seed=seed
        ),
        encoder=RESIDUAL_ENCODER,
        pairs=FASHION_MNIST_CONFUSED,
        other=other,
        fit_options=(
            # quick: one validation split instead of five cross-fitted members
            {"max_epochs": 6, "patience": 3, "folds": 1}
            if quick
            else {"max_epochs": 15, "patience": 4}
        ),
    )


def stress_tasks(data_dir: str | Path, *, quick: bool = False) -> list[StressTask]:
    """The image stress tasks (Fashion-MNIST)."""
    return [fashion_mnist_task(data_dir, quick=quick)]
