"""Plotting: region maps, confusion matrices, arm comparisons, uncertainty."""

from ._annotation import uncertainty
from ._plots import arms, confusion, regions

__all__ = ["arms", "confusion", "regions", "uncertainty"]
