"""Plotting: region maps, confusion matrices, arm comparisons, uncertainty."""

from ._annotation import uncertainty
from ._plots import arms, class_order, confusion, regions

__all__ = ["arms", "class_order", "confusion", "regions", "uncertainty"]
