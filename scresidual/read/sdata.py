"""One table of a SpatialData (object or ``.zarr`` store) as an AnnData with coordinates.

:func:`spatialdata` returns the chosen table as an AnnData (rows in order) with coordinates in
``obsm['spatial']``: the table's own, else spatialdata's ``get_centroids`` of the elements it
annotates, matched through its instance key. Writing predictions back is
:mod:`scresidual.model.sdata`. Reading is data only: zarr and anndata decode arrays without
pickle, shapes and points are Parquet.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import SPATIAL_KEY
from .._errors import ScResidualError, first_line
from .._validate import check_spatial
from ._common import coordinate_array, reading

ZARR_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")
"""Files that make a folder a zarr group (zarr v3, v2)."""


def is_spatialdata(obj) -> bool:
    """Whether ``obj`` is a :class:`spatialdata.SpatialData` (without importing spatialdata)."""
    module = sys.modules.get("spatialdata")
    return module is not None and isinstance(obj, module.SpatialData)


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a ``.zarr`` store: by its suffix, or a folder with zarr metadata."""
    path = Path(path)
    if path.suffix.lower() == ".zarr":
        return True
    return path.is_dir() and any((path / name).is_file() for name in ZARR_METADATA[:2])


def read_zarr(path: str | os.PathLike):
    """Read a SpatialData ``.zarr`` store with :func:`spatialdata.read_zarr`."""
    import spatialdata

    path = Path(path).expanduser()
    fix = "pass a store written by spatialdata (sdata.write('slide.zarr'))"
    with reading("SpatialData store", path, fix), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # format and autosharding notices
        return spatialdata.read_zarr(path)


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


def _coordinates(sdata, table: AnnData, name: str, where: str) -> np.ndarray:
    """Centroids of the annotated instances, one row per table row, in a shared system."""
    from spatialdata import get_centroids

    region, instance = _annotation(sdata, table, name, where)
    regions = list(pd.unique(region))
    system = _coordinate_system(sdata, regions, where)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        centroids = {
            r: get_centroids(sdata[r], coordinate_system=system).compute() for r in regions
        }
    axes = [a for a in ("x", "y", "z") if all(a in c.columns for c in centroids.values())]
    xy = np.empty((table.n_obs, len(axes)), dtype=np.float64)
    fix = (
        "give the element's instances unique ids that match the table, or store coordinates "
        "in the table's obsm['spatial']"
    )
    for r, cent in centroids.items():
        rows = (region == r).to_numpy()
        with reading(f"the instances (key {instance.name!r}) of element {r!r} in", where, fix):
            # ids may differ in int/str; a repeated instance id fails the reindex
            frame = cent.set_axis(cent.index.astype(str)).reindex(instance[rows].astype(str))
            xy[rows] = coordinate_array(frame, axes, f"element {r!r} of {where}", fix)
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
    if spatial_key not in table.obsm:  # else the table stands alone: no element needed
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
