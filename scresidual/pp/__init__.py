"""Preprocessing: spatial graphs, neighbour rings and gradients, target-side PCA features."""

from ._features import PCAFeatures
from ._graph import neighbourhood_gradients, neighbourhood_rings, spatial_graph

__all__ = ["PCAFeatures", "neighbourhood_gradients", "neighbourhood_rings", "spatial_graph"]
