"""Optional downloads of public data files, verified by sha256 (never used by the tests)."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

from ._errors import ScResidualError
from ._io import atomic_path


def sha256sum(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: str | Path, sha256: str) -> Path:
    """Download ``url`` to ``dest`` unless a file with the right checksum is already there.

    Parameters
    ----------
    url
        Address of the file.
    dest
        Where to store it.
    sha256
        Expected hex digest; a mismatch removes the download and raises.

    Returns
    -------
    ``dest``.

    """
    dest = Path(dest)
    if dest.is_file() and sha256sum(dest) == sha256:
        return dest
    with atomic_path(dest) as tmp:
        try:
            urllib.request.urlretrieve(url, tmp)  # noqa: S310 (fixed https URLs)
        except OSError as err:
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


def locate(root: str | Path, names: tuple[str, ...], subdirs: tuple[str, ...] = ()) -> Path | None:
    """First existing ``root/[subdir/]name``, or None."""
    root = Path(root)
    for d in ("", *subdirs):
        for name in names:
            if (root / d / name).is_file():
                return root / d / name
    return None
