"""User-facing models: the modality-agnostic core and the spatial region classifier."""

from ._config import ENGINE_OPTIONS, TRAIN_OPTIONS, ResidualConfig
from ._exact import ExactOptions
from ._gradient import GradientOptions
from ._residual import ResidualModel, labelled_mask
from ._spatial import SpatialRegionClassifier, spatial_solver
from ._tiled_fit import train_tiled
from ._tiled_predict import predict_tiled
from ._tiles import plan_tiles, receptive_halo

__all__ = [
    "ENGINE_OPTIONS",
    "TRAIN_OPTIONS",
    "ExactOptions",
    "GradientOptions",
    "ResidualConfig",
    "ResidualModel",
    "SpatialRegionClassifier",
    "labelled_mask",
    "plan_tiles",
    "predict_tiled",
    "receptive_halo",
    "spatial_solver",
    "train_tiled",
]
