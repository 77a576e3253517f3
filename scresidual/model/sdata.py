"""Predictions written back into a SpatialData: an object's table, or a ``.zarr`` store's.

:func:`predict_spatialdata` predicts on a table read by :func:`scresidual.read.spatialdata` and
copies the results into it (:func:`add_predictions`). In a ``.zarr`` store a table is replaced
atomically (:func:`write_table`): spatialdata's table writer writes the new one beside the old,
and :func:`scresidual._io.atomic_path` swaps it in. spatialdata's
``write_element(overwrite=True)`` refuses the store the object is backed by, and its
``delete_element_from_disk`` then ``write_element`` loses the table if interrupted.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from anndata import AnnData

from .._constants import (
    SPATIAL_KEY,
    calibration_key,
    pred_key,
    proba_classes_key,
    proba_key,
    set_key,
    set_size_key,
    train_key,
    uncertainty_key,
)
from .._errors import ScResidualError
from .._io import _writable, atomic_path, check_outside_model_dirs
from ..read.sdata import ZARR_METADATA, read_zarr, table_anndata

logger = logging.getLogger(__name__)

ATTRS_KEY = "spatialdata_attrs"
"""``uns`` key of a table's region, region key and instance key (spatialdata's TableModel)."""


def prediction_keys(key: str) -> dict[str, tuple[str, ...]]:
    """The keys ``predict`` (and ``fit --output``) write, per AnnData attribute."""
    return {
        "obs": (
            pred_key(key),
            uncertainty_key(key),
            set_key(key),
            set_size_key(key),
            train_key(key),
        ),
        "obsm": (proba_key(key),),
        "uns": (proba_classes_key(key), calibration_key(key)),
    }


def warn_several_regions(adata: AnnData, library_key: str | None) -> None:
    """Warn when a table annotates several elements but all cells would share one graph."""
    region_key = (adata.uns.get(ATTRS_KEY) or {}).get("region_key")
    if library_key is None and region_key in adata.obs and adata.obs[region_key].nunique() > 1:
        logger.warning(
            "the table annotates %d elements but all cells share one spatial graph; pass "
            "library_key=%r to build one graph per element.",
            adata.obs[region_key].nunique(),
            region_key,
        )


def add_predictions(adata: AnnData, table: AnnData, key: str) -> list[str]:
    """Copy the prediction keys of ``key`` present in ``adata`` into ``table``, row by row."""
    added = []
    for attr, keys in prediction_keys(key).items():
        source, target = getattr(adata, attr), getattr(table, attr)
        for k in keys:
            if k in source:
                target[k] = source[k].array if attr == "obs" else source[k]
                added.append(f"{attr}[{k!r}]")
    return added


def predict_spatialdata(
    model, sdata, *, table_key: str | None, key_added: str | None, copy: bool, **kwargs
):
    """``model.predict`` on a table of ``sdata``; the predictions go into that table.

    With ``copy`` the table is copied into a new SpatialData that shares the other elements;
    ``sdata`` is left unchanged and the new object returned.
    """
    name, adata = table_anndata(sdata, table_key=table_key, spatial_key=model.setup["spatial_key"])
    model.predict(adata, key_added=key_added, **kwargs)
    key = key_added or model.setup["labels_key"]
    if not copy:
        add_predictions(adata, sdata.tables[name], key)
        return None
    import spatialdata

    table = sdata.tables[name].copy()
    add_predictions(adata, table, key)
    return spatialdata.SpatialData(
        images=dict(sdata.images),
        labels=dict(sdata.labels),
        points=dict(sdata.points),
        shapes=dict(sdata.shapes),
        tables={**sdata.tables, name: table},
        attrs=dict(sdata.attrs),
    )


def _is_table_group(folder: Path) -> bool:
    """Whether ``folder`` is a spatialdata table group (the only folder a write replaces)."""
    import zarr

    try:
        group = zarr.open_group(folder, mode="r", use_consolidated=False)
    except Exception:  # not a zarr group at all
        return False
    return group.attrs.get("spatialdata-encoding-type") == "ngff:regions_table"


def has_consolidated_metadata(store: Path) -> bool:
    """Whether the ``.zarr`` store keeps consolidated metadata (zarr v2 or v3), to rewrite."""
    import zarr

    return (store / ".zmetadata").is_file() or bool(
        getattr(zarr.open_group(store, mode="r").metadata, "consolidated_metadata", None)
    )


def write_table(store: str | os.PathLike, name: str, table: AnnData) -> None:
    """Replace table ``name`` of the ``.zarr`` store ``store`` by ``table``, atomically.

    The table is written in the format (zarr version, table format) of the one it replaces.
    Nothing outside ``STORE/tables`` changes but the consolidated metadata, when the store
    has it.
    """
    import zarr
    from spatialdata._io.format import TablesFormats
    from spatialdata._io.io_table import write_table as write_sd_table
    from spatialdata._io.io_zarr import _write_consolidated_metadata

    store = Path(store)
    folder = store / "tables" / name
    if not _is_table_group(folder):
        raise ScResidualError(
            f"{folder} is not a spatialdata table; pass a store written by spatialdata."
        )
    old = zarr.open_group(folder, mode="r", use_consolidated=False)
    version = old.attrs.get("version", "0.1")
    if version not in TablesFormats:
        raise ScResidualError(
            f"table {name!r} of {store} is in table format {version!r}, which this spatialdata "
            "cannot write; update spatialdata."
        )
    consolidated = has_consolidated_metadata(store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autosharding notices
        with atomic_path(folder, replace_dir=_is_table_group) as target:
            parent = zarr.open_group(target.parent, mode="a", zarr_format=old.metadata.zarr_format)
            write_sd_table(table, parent, name, element_format=TablesFormats[version])
            for meta in ZARR_METADATA:  # only the table is swapped in
                (target.parent / meta).unlink(missing_ok=True)
        if consolidated:
            _write_consolidated_metadata(store)


def check_zarr_output(
    output: str | os.PathLike, store: str | os.PathLike, *, model_dirs=(), flag: str = "--output"
) -> bool:
    """Raise unless ``output`` may take the predictions made on ``store``.

    ``output`` is either ``store`` itself (the columns are added in place; returns True) or a
    new path ending in ``.zarr``, outside ``store`` and the model folders (a copy; False).
    """
    output, store = Path(output), Path(store)
    if output.exists() and store.exists() and output.samefile(store):
        _writable(store / "tables", flag)
        return True
    if not str(output).endswith(".zarr"):
        raise ScResidualError(
            f"{flag} {str(output)!r}: the input is a .zarr store, so pass the store itself "
            "(adds the predictions to its table in place) or a new path ending in .zarr (a copy)."
        )
    if os.path.lexists(output):
        raise ScResidualError(
            f"{flag} {output} exists; pass the input store {store} to add the predictions in "
            "place, or a new .zarr path for a copy."
        )
    check_outside_store(output, store, flag=flag)
    check_outside_model_dirs(output, model_dirs, flag)
    _writable(output.parent, flag)
    return False


def check_outside_store(
    path: str | os.PathLike, store: str | os.PathLike, *, flag: str | None = None
) -> None:
    """Raise if ``path`` lies inside the input store (which changes only by its table)."""
    if Path(path).resolve().is_relative_to(Path(store).resolve()):
        name = f"{flag} {path}" if flag else str(path)
        raise ScResidualError(
            f"{name} lies inside the input store {store}, which gains only prediction columns; "
            "choose a path outside it."
        )


@dataclass
class ZarrSlide:
    """A table of a ``.zarr`` store being labelled: where it came from and where it goes back."""

    path: Path
    sdata: object
    table: str

    @classmethod
    def read(
        cls,
        path: str | os.PathLike,
        *,
        table_key: str | None = None,
        spatial_key: str = SPATIAL_KEY,
    ) -> tuple[ZarrSlide, AnnData]:
        """Open the store; return it and its table as an AnnData (see :func:`spatialdata`)."""
        path = Path(path)
        sdata = read_zarr(path)
        name, adata = table_anndata(
            sdata, table_key=table_key, spatial_key=spatial_key, where=str(path)
        )
        return cls(path, sdata, name), adata

    def write(self, adata: AnnData, key: str, output: str | os.PathLike, *, model_dirs=()) -> None:
        """Add ``adata``'s predictions of ``key`` to the table in ``output``, atomically.

        ``output`` is the input store (the table is replaced in place) or a new ``.zarr``
        path: the store is copied there (beside it, under a hidden name), the table replaced
        in the copy, and the copy renamed into place.
        """
        in_place = check_zarr_output(output, self.path, model_dirs=model_dirs)
        table = self.sdata.tables[self.table]
        add_predictions(adata, table, key)
        if in_place:
            write_table(self.path, self.table, table)
            return
        with atomic_path(output, replace_dir=lambda _: False) as target:
            shutil.copytree(self.path, target, symlinks=True)
            write_table(target, self.table, table)
