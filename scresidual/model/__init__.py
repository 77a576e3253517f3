"""User-facing models: the modality-agnostic core and the spatial region classifier."""

from ._residual import TRAIN_OPTIONS, ResidualConfig, ResidualModel, labelled_mask
from ._spatial import SpatialRegionClassifier
from ._tiled_predict import predict_tiled
from ._tiles import plan_tiles, receptive_halo

__all__ = [
    "TRAIN_OPTIONS",
    "ResidualConfig",
    "ResidualModel",
    "SpatialRegionClassifier",
    "labelled_mask",
    "plan_tiles",
    "predict_tiled",
    "receptive_halo",
]
