"""Plotting: region maps, confusion matrices, arm comparisons."""

from ._plots import arms, confusion, regions

__all__ = ["arms", "confusion", "regions"]
