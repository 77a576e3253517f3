"""Prediction columns added to a table of a ``.zarr`` store without rewriting the table.

:func:`scresidual.model.sdata.write_table` replaces a whole table, ``X`` included: right for a
slide that fits in memory, wasteful for one that does not. Here only the elements that change
are written: each new ``obs`` column (then added to the frame's ``column-order``, so a column
is listed only once complete), and one ``obsm`` and ``uns`` entry each; every element is
written beside the old one with anndata's ``write_elem`` and swapped in by
:func:`scresidual._io.atomic_path`, so an interrupted write leaves the old element. The
existing ``obs`` is never read.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from .._io import atomic_path
from ..read.sdata import ZARR_METADATA
from .sdata import has_consolidated_metadata


def _is_element(folder: Path) -> bool:
    """Whether ``folder`` is an element anndata wrote (the only folders replaced here)."""
    import zarr

    try:
        node = zarr.open(folder, mode="r")
    except Exception:  # not zarr at all
        return False
    return "encoding-type" in node.attrs


def _replace(parent: Path, name: str, value, zarr_format: int) -> None:
    """Write ``value`` as element ``parent/name``, atomically."""
    import zarr
    from anndata.io import write_elem

    with atomic_path(parent / name, replace_dir=_is_element) as target:
        group = zarr.open_group(target.parent, mode="a", zarr_format=zarr_format)
        write_elem(group, name, value)
        for meta in ZARR_METADATA:  # only the element is swapped in
            (target.parent / meta).unlink(missing_ok=True)


def write_prediction_columns(
    store, table: str, *, obs: dict, obsm: dict, uns: dict, copy_to=None
) -> None:
    """Add ``obs`` columns and ``obsm``/``uns`` entries to table ``table`` of ``store``.

    ``copy_to``: a new ``.zarr`` path; the store is copied there first (under a hidden name,
    renamed into place when complete) and the copy changed instead.
    """
    if copy_to is not None:
        with atomic_path(copy_to, replace_dir=lambda _: False) as target:
            shutil.copytree(store, target, symlinks=True)
            write_prediction_columns(target, table, obs=obs, obsm=obsm, uns=uns)
        return
    import zarr
    from spatialdata._io.io_zarr import _write_consolidated_metadata

    store = Path(store)
    folder = store / "tables" / table
    fmt = zarr.open_group(folder, mode="r").metadata.zarr_format
    consolidated = has_consolidated_metadata(store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's notices on zarr formats
        for k, v in obs.items():
            _replace(folder / "obs", k, v, fmt)
        # a column is read only once listed: list the new ones after they are complete
        frame = zarr.open_group(folder / "obs", mode="r+")
        order = list(frame.attrs["column-order"])
        frame.attrs["column-order"] = order + [k for k in obs if k not in order]
        for k, v in obsm.items():
            _replace(folder / "obsm", k, v, fmt)
        for k, v in uns.items():
            _replace(folder / "uns", k, v, fmt)
        if consolidated:
            _write_consolidated_metadata(store)
