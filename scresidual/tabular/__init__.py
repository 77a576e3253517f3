"""Tabular pipeline: UCI loaders, a column encoder, an MLP source and residual."""

from ._data import TabularEncoder, load_adult, load_german
from ._pipeline import RESIDUAL_ENCODER, adult_task, german_task, pretrain_tabular_source

__all__ = [
    "RESIDUAL_ENCODER",
    "TabularEncoder",
    "adult_task",
    "german_task",
    "load_adult",
    "load_german",
    "pretrain_tabular_source",
]
