"""Temporarily quieter third-party loggers, and progress bars that suit the front end."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# tqdm.auto warns "IProgress not found" in notebooks without ipywidgets: fall back to text
# bars there, as Lightning does.
if importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm as _tqdm
else:
    from tqdm.std import tqdm as _tqdm

from ._settings import progress_enabled

__all__ = ["quiet_lightning", "quiet_loggers", "tqdm"]


def tqdm(*args, progress: bool | None = None, **kwargs):
    """A tqdm bar, shown if ``progress`` (``None``: :attr:`scresidual.settings.progress_bar`)."""
    return _tqdm(*args, disable=not progress_enabled(progress), **kwargs)


@contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of the named loggers for the duration of the block."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.setLevel(old)


_NOISY_WARNINGS = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*GPU available but not used.*",
    ".*LeafSpec.*",
)


_LIGHTNING_LOGGERS = (
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's start-up chatter and its advice about data-loader workers.

    Its INFO lines (seed set, GPU/TPU available, an advert, why ``fit`` stopped) describe
    settings scresidual chose, and printed twice wherever the root logger has a handler
    (the ``lightning`` logger has its own): progress bars are the progress. Its warnings
    still show.
    """
    with warnings.catch_warnings(), quiet_loggers(*_LIGHTNING_LOGGERS):
        for pattern in _NOISY_WARNINGS:
            warnings.filterwarnings("ignore", pattern)
        yield
