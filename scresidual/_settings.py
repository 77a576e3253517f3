"""Package-wide defaults, scanpy-style: ``sr.settings.progress_bar = False``.

A function whose ``progress``, ``seed`` or ``n_jobs`` is ``None`` uses the value here, read
when the value is used (not when the function is defined), so changing a setting affects
later calls.
"""

from __future__ import annotations

import logging

from ._errors import ScResidualError

__all__ = ["ScResidualSettings", "progress_enabled", "settings"]

# scanpy's verbosity scale (without its "hint" level): 0 errors … 3 debug messages.
_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}
_NAMES = {"error": 0, "warning": 1, "info": 2, "debug": 3}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ScResidualSettings:
    """Defaults for the whole package; use the instance :data:`scresidual.settings`.

    Attributes
    ----------
    verbosity
        Level of the ``scresidual`` loggers: 0 errors, 1 warnings, 2 information, 3 debug
        messages (or the names ``"error"``, ``"warning"``, ``"info"``, ``"debug"``). Until
        set, the level is inherited from the root logger (warnings, by default).
    progress_bar
        Show progress bars where a function's ``progress`` is ``None`` (default ``True``).
    seed
        Random seed where a function's ``seed`` is ``None`` (default 0).
    n_jobs
        Processes fitting cross-fitted folds where a model's ``n_jobs`` is ``None``;
        ``None`` (default): one per available CPU when training on one CPU device.

    """

    def __init__(self) -> None:
        self._progress_bar = True
        self._seed = 0
        self._n_jobs: int | None = None

    @property
    def verbosity(self) -> int:
        level = logging.getLogger("scresidual").getEffectiveLevel()
        # The nearest named level at or below the effective one (e.g. 25 reads as info).
        return max((v for v, lv in _LEVELS.items() if lv >= level), default=0)

    @verbosity.setter
    def verbosity(self, value: int | str) -> None:
        key = _NAMES.get(value.lower()) if isinstance(value, str) else value
        if not _is_int(key) or key not in _LEVELS:
            raise ScResidualError(
                f"settings.verbosity must be 0-3 or one of {list(_NAMES)}, not {value!r}."
            )
        logging.getLogger("scresidual").setLevel(_LEVELS[key])

    @property
    def progress_bar(self) -> bool:
        return self._progress_bar

    @progress_bar.setter
    def progress_bar(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ScResidualError(f"settings.progress_bar must be True or False, not {value!r}.")
        self._progress_bar = value

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        if not _is_int(value) or value < 0:
            raise ScResidualError(f"settings.seed must be a non-negative integer, not {value!r}.")
        self._seed = value

    @property
    def n_jobs(self) -> int | None:
        return self._n_jobs

    @n_jobs.setter
    def n_jobs(self, value: int | None) -> None:
        if value is not None and (not _is_int(value) or value < 1):
            raise ScResidualError(
                f"settings.n_jobs must be a positive integer or None, not {value!r}."
            )
        self._n_jobs = value

    def __repr__(self) -> str:
        names = ("verbosity", "progress_bar", "seed", "n_jobs")
        return "ScResidualSettings(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"


settings = ScResidualSettings()
"""The package's settings (``scresidual.settings``)."""


def progress_enabled(progress: bool | None) -> bool:
    """``progress``, or :attr:`settings.progress_bar <ScResidualSettings.progress_bar>` if None."""
    return settings.progress_bar if progress is None else bool(progress)
