"""Preprocessing: spatial graphs, neighbour rings and target-side PCA features."""

from ._features import PCAFeatures
from ._graph import neighbourhood_rings, spatial_graph

__all__ = ["PCAFeatures", "neighbourhood_rings", "spatial_graph"]
