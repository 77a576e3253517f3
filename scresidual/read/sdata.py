"""SpatialData in and out: one table of a SpatialData as an AnnData, and predictions written back.

:func:`spatialdata` returns the chosen table as an AnnData (rows in order) with coordinates in
``obsm['spatial']``: the table's own, else spatialdata's ``get_centroids`` of the elements it
annotates, matched through its instance key. :func:`add_predictions` copies results back.

In a ``.zarr`` store a table is replaced atomically (:func:`write_table`): spatialdata's table
writer writes the new one beside the old, and :func:`scresidual._io.atomic_path` swaps it in.
spatialdata's ``write_element(overwrite=True)`` refuses the store the object is backed by, and
its ``delete_element_from_disk`` then ``write_element`` loses the table if interrupted. Reading
is data only: zarr and anndata decode arrays without pickle, shapes and points are Parquet.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
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
from .._validate import check_spatial
from ._common import as_path, first_line, require_path

logger = logging.getLogger(__name__)

ATTRS_KEY = "spatialdata_attrs"
"""``uns`` key of a table's region, region key and instance key (spatialdata's TableModel)."""

_ZARR_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")
"""Files that make a folder a zarr group (zarr v3, v2)."""


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


def is_spatialdata(obj) -> bool:
    """Whether ``obj`` is a :class:`spatialdata.SpatialData` (without importing spatialdata)."""
    module = sys.modules.get("spatialdata")
    return module is not None and isinstance(obj, module.SpatialData)


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a ``.zarr`` store: by its suffix, or a folder with zarr metadata."""
    path = Path(path)
    if path.suffix.lower() == ".zarr":
        return True
    return path.is_dir() and any((path / name).is_file() for name in _ZARR_METADATA[:2])


def read_zarr(path: str | os.PathLike):
    """Read a SpatialData ``.zarr`` store with :func:`spatialdata.read_zarr`, checking it first."""
    path = require_path(as_path(path, "store"), "SpatialData store", "check the path", folder=True)
    if not any((path / name).is_file() for name in _ZARR_METADATA[:2]):
        raise ScResidualError(
            f"{path} is a folder but not a zarr store (no zarr.json or .zgroup); pass a store "
            "written by spatialdata (sdata.write('slide.zarr'))."
        )
    import spatialdata

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # format and autosharding notices
            return spatialdata.read_zarr(path)
    except Exception as err:  # truncated files, foreign layouts, unsupported codecs
        raise ScResidualError(
            f"could not read the SpatialData store {path} ({type(err).__name__}: "
            f"{first_line(err)}); re-write it with spatialdata."
        ) from err


def _elements(sdata) -> str:
    """The spatial elements of ``sdata`` for a message: ``shapes 'cells', points 'tx'``."""
    found = [f"{kind} {name!r}" for kind, name, _ in sdata.gen_spatial_elements()]
    return ", ".join(found) or "none"


def choose_table(sdata, table_key: str | None, where: str) -> str:
    """The name of the table to use: ``table_key``, else the only one."""
    names = list(sdata.tables)
    if table_key is not None:
        if table_key not in sdata.tables:
            raise ScResidualError(
                f"{where} has no table {table_key!r}; its tables: {', '.join(names) or 'none'}."
            )
        return table_key
    if not names:
        raise ScResidualError(
            f"{where} holds no table (elements: {_elements(sdata)}); add one that annotates "
            "its cells or spots (spatialdata.models.TableModel.parse)."
        )
    if len(names) > 1:
        raise ScResidualError(
            f"{where} holds {len(names)} tables ({', '.join(names)}); choose one with "
            "table_key='NAME'."
        )
    return names[0]


def _annotation(sdata, table: AnnData, name: str, where: str) -> tuple[pd.Series, pd.Series]:
    """Per row of table ``name``: the element it annotates and its instance id there."""
    from spatialdata.models import TableModel, get_table_keys

    fix = (
        "annotate one with spatialdata.models.TableModel.parse(table, region=NAME, "
        "region_key=..., instance_key=...)"
    )
    try:  # spatialdata's own checks: attrs present, their obs columns there and matching
        TableModel().validate(table)
        _, region_key, instance_key = get_table_keys(table)
    except (ValueError, TypeError, KeyError) as err:
        raise ScResidualError(
            f"table {name!r} of {where} annotates no element properly ({first_line(err)}); its "
            f"elements: {_elements(sdata)}; {fix}."
        ) from err
    region = table.obs[region_key].astype(str)
    missing = sorted(set(region) - {n for _, n, _ in sdata.gen_spatial_elements()})
    if missing:
        raise ScResidualError(
            f"table {name!r} of {where} annotates {', '.join(map(repr, missing))}, which "
            f"{where} lacks; its elements: {_elements(sdata)}; {fix}."
        )
    images = sorted(r for r in set(region) if r in sdata.images)
    if images:
        raise ScResidualError(
            f"table {name!r} of {where} annotates the image {images[0]!r}; a table must "
            "annotate shapes, points or labels (one row per cell or spot)."
        )
    return region, table.obs[instance_key]


def _coordinate_system(sdata, regions: list[str], where: str) -> str:
    """``'global'`` if every annotated element has it, else their one shared system."""
    from spatialdata.transformations import get_transformation

    shared = None
    for r in regions:
        systems = set(get_transformation(sdata[r], get_all=True))
        shared = systems if shared is None else shared & systems
    if "global" in shared:
        return "global"
    if len(shared) == 1:
        return shared.pop()
    raise ScResidualError(
        f"the elements {', '.join(map(repr, regions))} of {where} share no single coordinate "
        f"system (shared: {', '.join(sorted(shared)) or 'none'}); give them one, or store "
        "coordinates in the table's obsm['spatial']."
    )


def _positions(index: pd.Index, ids: pd.Series) -> np.ndarray:
    """Row of ``index`` for each id (-1 when absent); ids and index may differ in int/str."""
    pos = index.get_indexer(ids)
    if (pos < 0).any():
        pos = index.astype(str).get_indexer(ids.astype(str))
    return pos


def _coordinates(sdata, table: AnnData, name: str, where: str) -> np.ndarray:
    """Centroids of the annotated instances, one row per table row, in a shared system."""
    from spatialdata import get_centroids

    region, instance = _annotation(sdata, table, name, where)
    regions = list(pd.unique(region))
    system = _coordinate_system(sdata, regions, where)
    centroids = {}
    for r in regions:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            centroids[r] = get_centroids(sdata[r], coordinate_system=system).compute()
    axes = [a for a in ("x", "y", "z") if all(a in c.columns for c in centroids.values())]
    xy = np.empty((table.n_obs, len(axes)), dtype=np.float64)
    for r, cent in centroids.items():
        rows = np.flatnonzero((region == r).to_numpy())
        if not cent.index.is_unique:
            raise ScResidualError(
                f"element {r!r} of {where} repeats instance ids, so table {name!r} cannot be "
                "matched to it; give its instances unique ids."
            )
        pos = _positions(cent.index, instance.iloc[rows])
        if (pos < 0).any():
            bad = instance.iloc[rows[pos < 0]]
            raise ScResidualError(
                f"{len(bad)} row(s) of table {name!r} of {where} have no instance in element "
                f"{r!r} (instance key {instance.name!r}, e.g. {bad.iloc[0]!r}), so they have no "
                "coordinates; match the table to the element or store coordinates in the "
                "table's obsm['spatial']."
            )
        xy[rows] = cent[axes].to_numpy(dtype=np.float64)[pos]
    return xy


def table_anndata(
    sdata,
    *,
    table_key: str | None = None,
    spatial_key: str = SPATIAL_KEY,
    where: str = "the SpatialData",
) -> tuple[str, AnnData]:
    """The chosen table's name and the table as a new AnnData with coordinates.

    The AnnData shares ``X`` and ``layers`` with the table (nothing is copied but ``obs``,
    ``var`` and the containers); its rows are the table's, in order.
    """
    name = choose_table(sdata, table_key, where)
    table = sdata.tables[name]
    _annotation(sdata, table, name, where)
    adata = AnnData(
        X=table.X,
        obs=table.obs.copy(),
        var=table.var.copy(),
        obsm=dict(table.obsm),
        layers=dict(table.layers),
        uns=dict(table.uns),
    )
    if spatial_key not in adata.obsm:
        adata.obsm[spatial_key] = _coordinates(sdata, table, name, where)
    adata.obs_names_make_unique()  # rows map back by position, not by name
    try:
        check_spatial(adata, spatial_key)
    except ScResidualError as err:
        raise ScResidualError(f"table {name!r} of {where}: {err}") from err
    return name, adata


def spatialdata(sdata, *, table_key: str | None = None, spatial_key: str = SPATIAL_KEY) -> AnnData:
    """One table of a SpatialData (object or ``.zarr`` store) as an AnnData with coordinates.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` or the path of a ``.zarr`` store (read with
        :func:`spatialdata.read_zarr`; never modified).
    table_key
        Name of the table; may be left out when there is only one.
    spatial_key
        ``obsm`` key of the coordinates. The table's own ``obsm[spatial_key]`` is used when
        present; otherwise the centroids of the shapes (circles' centres, polygons'
        centroids), points or labels the table annotates, matched through its instance key,
        in the ``'global'`` coordinate system (or the one system the elements share).

    Returns
    -------
    A new AnnData with the table's rows in order, sharing its ``X``; the table is unchanged.

    """
    where = "the SpatialData"
    if not is_spatialdata(sdata):
        where = str(sdata)
        sdata = read_zarr(sdata)
    return table_anndata(sdata, table_key=table_key, spatial_key=spatial_key, where=where)[1]


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


# ---------------------------------------------------------------------------- writing
def _is_table_group(folder: Path) -> bool:
    """Whether ``folder`` is a spatialdata table group (the only folder a write replaces)."""
    import zarr

    try:
        group = zarr.open_group(folder, mode="r", use_consolidated=False)
    except Exception:  # not a zarr group at all
        return False
    return group.attrs.get("spatialdata-encoding-type") == "ngff:regions_table"


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
    consolidated = (store / ".zmetadata").is_file() or bool(
        getattr(zarr.open_group(store, mode="r").metadata, "consolidated_metadata", None)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autosharding notices
        with atomic_path(folder, replace_dir=_is_table_group) as target:
            parent = zarr.open_group(target.parent, mode="a", zarr_format=old.metadata.zarr_format)
            write_sd_table(table, parent, name, element_format=TablesFormats[version])
            for meta in _ZARR_METADATA:  # only the table is swapped in
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
