"""Image pipeline: data loaders, a pretrained CNN source and a residual CNN."""

from ._data import as_images, load_cifar, load_fashion_mnist, load_mnist_csv, read_idx
from ._pipeline import RESIDUAL_ENCODER, fashion_mnist_task, image_views, pretrain_image_source

__all__ = [
    "RESIDUAL_ENCODER",
    "as_images",
    "fashion_mnist_task",
    "image_views",
    "load_cifar",
    "load_fashion_mnist",
    "load_mnist_csv",
    "pretrain_image_source",
    "read_idx",
]
