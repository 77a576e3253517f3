"""Plotting: region maps, confusion matrices, arm comparisons, uncertainty."""

from ._annotation import uncertainty
from ._annotator import Annotator, annotate, restore_annotation
from ._plots import arms, class_order, confusion, regions

__all__ = [
    "Annotator",
    "annotate",
    "arms",
    "class_order",
    "confusion",
    "regions",
    "restore_annotation",
    "uncertainty",
]
