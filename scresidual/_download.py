"""Optional downloads of public data files, verified by sha256 (never used by the tests)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from ._errors import ScResidualError
from ._io import atomic_path

logger = logging.getLogger(__name__)


def sha256sum(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


TIMEOUT_S = 60
"""Seconds a download may wait for the server (connecting, or between chunks)."""


def check_sha256(path: Path, sha256: str) -> Path:
    """Return ``path`` if its sha256 is ``sha256``; else raise (the file is left as it is)."""
    got = sha256sum(path)
    if got != sha256:
        raise ScResidualError(
            f"{path} has sha256 {got[:12]}…, expected {sha256[:12]}…: the file is damaged or "
            "not the expected one; delete it and download it again."
        )
    return path


def fetch(url: str, dest: str | Path, sha256: str, *, timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` unless a file is already there; verify it either way.

    Parameters
    ----------
    url
        Address of the file; only ``https://`` is accepted.
    dest
        Where to store it. A file already there is used only if its checksum matches (it is
        never replaced).
    sha256
        Expected hex digest; a mismatching download is discarded.
    timeout
        Seconds to wait for the server.

    Returns
    -------
    ``dest``.

    """
    dest = Path(dest)
    if dest.is_file():
        return check_sha256(dest, sha256)
    if urllib.parse.urlsplit(url).scheme != "https":
        raise ScResidualError(
            f"refusing to download {url}: only https:// addresses are used; place the file at "
            f"{dest} yourself."
        )
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:  # noqa: S310 (https only, checked above)
                shutil.copyfileobj(response, f, 1 << 20)
        except OSError as err:  # URLError, timeouts and refused connections are OSErrors
            raise ScResidualError(
                f"cannot download {url} ({err}); place the file at {dest} yourself."
            ) from err
        got = sha256sum(tmp)
        if got != sha256:
            raise ScResidualError(
                f"checksum mismatch for {url} (sha256 {got[:12]}…, expected {sha256[:12]}…); "
                f"download it manually to {dest}."
            )
    return dest


def warn_if_modified(path: Path, sha256: str) -> Path:
    """Warn if a data file the user provided differs from the official one; return it.

    A local copy may be the user's own variant, so it is used, but never silently.
    """
    got = sha256sum(path)
    if got != sha256:
        logger.warning(
            "%s differs from the official file (sha256 %s…, expected %s…); results will not "
            "match published ones.",
            path,
            got[:12],
            sha256[:12],
        )
    return path


def locate(root: str | Path, names: tuple[str, ...], subdirs: tuple[str, ...] = ()) -> Path | None:
    """First existing ``root/[subdir/]name``, or None."""
    root = Path(root)
    for d in ("", *subdirs):
        for name in names:
            if (root / d / name).is_file():
                return root / d / name
    return None
