"""User-facing models: the modality-agnostic core and the spatial region classifier."""

from ._residual import TRAIN_OPTIONS, ResidualConfig, ResidualModel, labelled_mask
from ._spatial import SpatialRegionClassifier

__all__ = [
    "TRAIN_OPTIONS",
    "ResidualConfig",
    "ResidualModel",
    "SpatialRegionClassifier",
    "labelled_mask",
]
