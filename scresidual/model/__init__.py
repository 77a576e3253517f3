"""User-facing models: the modality-agnostic core and the spatial region classifier."""

from ._config import ENGINE_OPTIONS, TRAIN_OPTIONS, ResidualConfig
from ._exact import ExactOptions
from ._gradient import GradientOptions
from ._residual import ResidualModel, labelled_mask
from ._spatial import SpatialRegionClassifier, spatial_solver

__all__ = [
    "ENGINE_OPTIONS",
    "TRAIN_OPTIONS",
    "ExactOptions",
    "GradientOptions",
    "ResidualConfig",
    "ResidualModel",
    "SpatialRegionClassifier",
    "labelled_mask",
    "spatial_solver",
]
