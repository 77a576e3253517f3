"""Text pipeline: a frozen sentence encoder source and a hashed TF-IDF residual."""

from ._data import HashedTfidf, SentenceEncoder, load_rotten_tomatoes, load_text_csv
from ._pipeline import RESIDUAL_ENCODER, pretrain_text_source, rotten_tomatoes_task

__all__ = [
    "RESIDUAL_ENCODER",
    "HashedTfidf",
    "SentenceEncoder",
    "load_rotten_tomatoes",
    "load_text_csv",
    "pretrain_text_source",
    "rotten_tomatoes_task",
]
