"""User-facing models: the modality-agnostic core and the spatial region classifier."""

from ._residual import ResidualConfig, ResidualModel, labelled_mask
from ._spatial import SpatialRegionClassifier

__all__ = ["ResidualConfig", "ResidualModel", "SpatialRegionClassifier", "labelled_mask"]
