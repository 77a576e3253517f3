"""Atomic writes that never lose a file: only scresidual's own folders are ever replaced.

A save writes into a hidden temporary folder ``.NAME.XXXXXXXX.tmp`` beside its target and
renames it into place. Replacing a folder takes two renames (old folder into the temporary,
new one into place); a save killed between them leaves the old model only at
``.NAME.XXXXXXXX.tmp/.old``, which the next save or load of that path puts back. Other
leftovers of interrupted saves are removed then too. A running save holds a lock on its
temporary folder, so another process never removes it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ._errors import ScResidualError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; leftovers are cleaned without one
    fcntl = None

logger = logging.getLogger(__name__)

MODEL_MARKER = "residual_model.json"
"""Every folder scresidual saves a model into holds this file, with its ``"format"`` version."""

_BACKUP = ".old"


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a real folder holding scresidual's marker file with a format version."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir() or not (path / MODEL_MARKER).is_file():
        return False
    try:
        meta = json.loads((path / MODEL_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("format"), int)


@contextmanager
def _lock(folder: Path, *, wait: bool) -> Iterator[bool]:
    """Hold an advisory lock on ``folder``; yields False if another process holds it."""
    if fcntl is None:
        yield True
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _leftovers(path: Path) -> list[Path]:
    """Temporary folders of earlier saves of ``path``: name pattern and contents both match.

    An empty one may be a save that has not yet taken its lock: it is left alone.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    if not path.parent.is_dir():
        return []
    found = []
    for p in path.parent.iterdir():
        if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            with contextlib.suppress(OSError):
                entries = set(os.listdir(p))
                if entries and entries <= {path.name, _BACKUP}:
                    found.append(p)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recover(path: str | os.PathLike) -> None:
    """Undo interrupted saves of ``path``; never touches a save still running.

    A model left only in a temporary folder is put back; other leftovers are removed.
    """
    path = Path(path)
    for tmp in _leftovers(path):
        try:
            with _lock(tmp, wait=False) as free:
                if not free:
                    continue  # a save in progress
                backup = tmp / _BACKUP
                if backup.is_dir() and not os.path.lexists(path):
                    os.replace(backup, path)
                    logger.warning("restored %s, left aside by an interrupted save", path)
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as err:  # e.g. a read-only shared folder: loading must still work
            logger.warning("could not clean up %s (%s); remove it yourself", tmp, err.strerror)


@contextmanager
def atomic_path(
    path: str | os.PathLike, *, replace_dir: Callable[[Path], bool] = is_model_dir
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it over ``path`` only on success.

    Works for files and directories. On error the temporary is removed and ``path`` (if it
    existed) is left untouched. An existing folder at ``path`` is replaced only if
    ``replace_dir(path)`` (default: it is a scresidual model folder); anything else there is
    refused before writing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    _check_replace_dir(path, replace_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _lock(tmp, wait=True):
            target = tmp / path.name
            yield target
            if path.is_dir() and not path.is_symlink():
                _check_replace_dir(path, replace_dir)
                # Directories cannot be replaced in one rename: swap through a backup.
                os.replace(path, tmp / _BACKUP)
                os.replace(target, path)
            else:
                os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder, nothing else


def _check_replace_dir(path: Path, replace_dir: Callable[[Path], bool]) -> None:
    if path.is_dir() and not path.is_symlink() and not replace_dir(path):
        raise ScResidualError(
            f"{path} is a folder scresidual did not write; refused to replace it: choose "
            "another path, or move the folder away yourself."
        )


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def _writable(folder: Path, what: str) -> None:
    """Raise if the nearest existing folder at or above ``folder`` cannot be written."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise ScResidualError(
            f"cannot write {what} into {existing} (read-only); choose a writable folder."
        )


def check_model_dir(
    path: str | os.PathLike, *, overwrite: bool, flag: str, inputs: Iterable = ()
) -> None:
    """Raise unless a model may be saved at ``path``.

    That is: nothing there, or (with ``overwrite``) a scresidual model folder holding none
    of ``inputs``.

    ``flag`` names the option that allows replacing (``"overwrite=True"`` or ``"--overwrite"``).
    """
    path = Path(path)
    if path.is_symlink():
        raise ScResidualError(
            f"model folder {path} is a symbolic link; pass the real folder path instead."
        )
    if path.exists() and not path.is_dir():
        raise ScResidualError(f"model folder {path} is a file; choose another path.")
    _writable(path.parent, "the model folder")
    if not path.exists():
        return
    if not overwrite:
        raise ScResidualError(f"{path} exists; pass {flag} to replace it or choose another path.")
    if not is_model_dir(path):
        raise ScResidualError(
            f"{path} is not a scresidual model folder (no {MODEL_MARKER}); refused to replace it: "
            "choose another path, or move the folder away yourself."
        )
    real = path.resolve()
    for inp in inputs:
        if Path(inp).resolve().is_relative_to(real):
            raise ScResidualError(
                f"{path} holds the input {inp}; refused to replace it: move the input out or "
                "choose another model folder."
            )


def check_outside_model_dirs(path: Path, model_dirs, flag: str) -> None:
    """Refuse an output inside a model folder, which a later ``--overwrite`` replaces."""
    for folder in model_dirs:
        if Path(path).resolve().is_relative_to(Path(folder).resolve()):
            raise ScResidualError(
                f"{flag} {path} lies inside the model folder {folder}, which a later "
                f"--overwrite replaces; write {flag} elsewhere."
            )


def check_output_file(
    path: str | os.PathLike,
    *,
    inputs: Iterable = (),
    model_dirs: Iterable = (),
    suffix: str = ".h5ad",
    flag: str = "--output",
) -> None:
    """Raise unless ``path`` may take a new output file.

    It needs the right suffix, and must be no folder, none of ``inputs`` and not inside any
    of ``model_dirs``.
    """
    if not str(path).endswith(suffix):
        raise ScResidualError(f"{flag} {str(path)!r} must end in {suffix}.")
    path = Path(path)
    if path.is_dir():
        raise ScResidualError(f"{flag} {path} is a folder; pass a file path ending in {suffix}.")
    for inp in inputs:
        if path.resolve() == Path(inp).resolve() or (
            path.exists() and Path(inp).exists() and path.samefile(inp)
        ):
            raise ScResidualError(
                f"{flag} {path} is the input {inp}; pass another {flag} (inputs are never changed)."
            )
    check_outside_model_dirs(path, model_dirs, flag)
    _writable(path.parent, flag)


def check_fit_paths(input_path, model_dir, output, *, overwrite: bool) -> None:
    """The checks of ``scresidual fit``'s paths, run before training (and again before saving)."""
    check_model_dir(model_dir, overwrite=overwrite, flag="--overwrite", inputs=[input_path])
    if output is not None:
        check_output_file(output, inputs=[input_path], model_dirs=[model_dir])


def os_error_message(err: OSError) -> str:
    """One line for an operating-system error: what failed, and what to do about it."""
    where = f" {err.filename}" if err.filename else ""
    fix = {
        errno.ENOSPC: "free some disk space and run again",
        errno.EDQUOT: "free some disk space and run again",
        errno.EACCES: "choose a folder you may write to",
        errno.EPERM: "choose a folder you may write to",
        errno.EROFS: "choose a folder on a writable disk",
    }.get(err.errno, "check the path and run again")
    return f"{err.strerror or type(err).__name__}:{where}; {fix} (nothing was written half)."
