"""Image data: IDX (Fashion-MNIST/MNIST), the 5k-MNIST CSV and CIFAR python batches.

Loaders return ``(x, y)`` with ``x`` uint8 ``(n, channels, height, width)`` and ``y`` int64.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from .._download import fetch, locate, warn_if_modified
from .._errors import ScResidualError
from .._safe_load import read_plain_pickle

FASHION_MNIST_URL = "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
"""Original Fashion-MNIST files and their sha256."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_CONFUSED = ((0, 6), (2, 4), (7, 9))
"""Visually similar class pairs used by the semantic-confusion setting."""


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) of unsigned bytes into an array."""
    path = Path(path)
    with _open(path) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ScResidualError(f"{path} is not an IDX file of unsigned bytes; check the file.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ScResidualError(f"{path} is truncated ({arr.size} values for shape {shape}).")
    return arr.reshape(shape)


def load_fashion_mnist(
    root: str | Path, split: str = "train", *, download: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (or MNIST, same file names) from IDX files in ``root``.

    Parameters
    ----------
    root
        Folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (also looked for
        under ``root/fashion_mnist`` and ``root/image/fashion_mnist``).
    split
        ``"train"`` or ``"test"``.
    download
        Folder to download the original files into (checked by sha256) when not found.

    Returns
    -------
    Images ``(n, 1, 28, 28)`` uint8 and labels.

    """
    if split not in ("train", "test"):
        raise ScResidualError(f"unknown split {split!r}; use 'train' or 'test'.")
    prefix = "train" if split == "train" else "t10k"
    subdirs = ("fashion_mnist", "image/fashion_mnist")
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{prefix}-{kind}-ubyte"
        path = locate(root, (f"{name}.gz", name), subdirs)
        if path is not None and path.name in FASHION_MNIST_FILES:
            warn_if_modified(path, FASHION_MNIST_FILES[path.name])
        if path is None and download is not None:
            path = fetch(
                FASHION_MNIST_URL + f"{name}.gz",
                Path(download) / f"{name}.gz",
                FASHION_MNIST_FILES[f"{name}.gz"],
            )
        if path is None:
            raise ScResidualError(
                f"no {name}[.gz] in {root}; put the Fashion-MNIST IDX files there or pass "
                "download=<folder>."
            )
        found.append(read_idx(path))
    x, y = found
    if x.ndim != 3 or len(x) != len(y):
        raise ScResidualError(f"{root}: {len(x)} images but {len(y)} labels; files do not match.")
    return x[:, None], y.astype(np.int64)


def load_mnist_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits from a CSV of 784 pixel columns then the label (header optional)."""
    path = Path(path)
    if not path.is_file():
        raise ScResidualError(f"{path} does not exist; pass the 5k-MNIST CSV file.")
    df = pd.read_csv(path, header=None)
    if not np.issubdtype(df.dtypes.iloc[0], np.number):  # a header row
        df = pd.read_csv(path)
    values = df.to_numpy()
    if values.shape[1] != 785:
        raise ScResidualError(
            f"{path} has {values.shape[1]} columns; expected 784 pixels then the label."
        )
    return values[:, :784].reshape(-1, 1, 28, 28).astype(np.uint8), values[:, 784].astype(np.int64)


def load_cifar(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 or CIFAR-100 from the python pickle batches.

    Parameters
    ----------
    root
        ``cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``) or ``cifar-100-python``
        (``train``, ``test``; fine labels), or a folder containing one of them.
    split
        ``"train"`` or ``"test"``.

    Returns
    -------
    Images ``(n, 3, 32, 32)`` uint8 and labels.

    """
    root = Path(root)
    for d in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        names = (
            [f"data_batch_{i}" for i in range(1, 6)]
            if (d / "data_batch_1").is_file()
            else ["train"]
            if (d / "train").is_file()
            else []
        )
        if names:
            break
    else:
        raise ScResidualError(
            f"no CIFAR python batches in {root}; extract cifar-10-python.tar.gz or "
            "cifar-100-python.tar.gz there."
        )
    if split == "test":
        names = ["test_batch"] if names[0].startswith("data_batch") else ["test"]
    xs, ys = [], []
    for name in names:
        batch = read_plain_pickle(  # the official format, read as data only
            d / name,
            what="CIFAR batch",
            fix="extract the official CIFAR archive again",
            encoding="bytes",
        )
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch.get(b"labels", batch.get(b"fine_labels")), dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def as_images(x, *, channels: int | None = None) -> np.ndarray:
    """Validate images and scale them to float32 ``(n, channels, h, w)`` in ``[0, 1]``.

    ``(n, h, w)`` gets a channel axis; uint8 values are divided by 255.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or min(x.shape[2:]) < 4:
        raise ScResidualError(
            f"images have shape {x.shape}; expected (n, channels, height, width) with "
            "height and width of at least 4."
        )
    if channels is not None and x.shape[1] != channels:
        raise ScResidualError(
            f"images have {x.shape[1]} channels but the model expects {channels}; convert them "
            "(e.g. to grayscale) first."
        )
    if not len(x):
        raise ScResidualError("the image split is empty; give at least one image.")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return x.astype(np.float32) / scale
