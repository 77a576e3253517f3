"""Preprocessing: spatial graphs, neighbourhood features and target-side PCA features."""

from ._features import PCAFeatures, pca_features
from ._graph import (
    neighbourhood_features,
    neighbourhood_rings,
    spatial_graph,
    spatial_graph_matrix,
)

__all__ = [
    "PCAFeatures",
    "neighbourhood_features",
    "neighbourhood_rings",
    "pca_features",
    "spatial_graph",
    "spatial_graph_matrix",
]
