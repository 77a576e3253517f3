"""Text pipeline: a frozen sentence encoder source and a static word-vector residual."""

from ._data import (
    HashedTfidf,
    SentenceEncoder,
    StaticTokenEmbedding,
    load_rotten_tomatoes,
    load_text_csv,
)
from ._pipeline import RESIDUAL_ENCODER, TextFeatures, pretrain_text_source, rotten_tomatoes_task

__all__ = [
    "RESIDUAL_ENCODER",
    "HashedTfidf",
    "SentenceEncoder",
    "StaticTokenEmbedding",
    "TextFeatures",
    "load_rotten_tomatoes",
    "load_text_csv",
    "pretrain_text_source",
    "rotten_tomatoes_task",
]
