"""Saving and loading the spatial model: its core, feature maps, setup and scvi sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .._constants import ENCODER_SOLVERS
from .._errors import ScResidualError
from .._io import atomic_path, check_model_dir, recover
from .._safe_load import check_spatial_setup
from .._validate import parse_spec
from ._residual import ResidualModel
from ._spatial_setup import (
    PCA_KINDS,
    SETUP_FORMAT,
    SOURCE_KINDS,
    all_features,
    pca_arrays,
    read_pca,
)
from ._spatial_views import SETUP_FILE, scvi_dir


def save(model, path: str | Path, *, overwrite: bool = False) -> None:
    """Save the model, its feature maps and copies of its scvi sources, atomically."""
    core = model._fitted()
    path = Path(path)
    check_model_dir(path, overwrite=overwrite, flag="overwrite=True")
    setup = dict(model.setup)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        core.write(tmp)
        setup["sources"] = []
        for i, spec in enumerate(model.setup["sources"]):
            kind, value = parse_spec(spec, SOURCE_KINDS, "source")
            if kind == "scvi":
                src = model._frozen[i].model_dir if i in model._frozen else scvi_dir(model, value)
                shutil.copytree(src, tmp / "sources" / f"source_{i}")
                spec = f"scvi:sources/source_{i}"
            setup["sources"].append(spec)
        for j, pca in model._pca.items():
            np.savez(tmp / f"features_{j}_pca.npz", **pca_arrays(pca))
        (tmp / SETUP_FILE).write_text(json.dumps(setup, indent=2))


def load(
    cls, path: str | Path, *, progress: bool | None = None, trust_pickle: bool = False
) -> object:
    """A ``cls`` (:class:`SpatialRegionClassifier`) from a folder written by :func:`save`.

    Nothing in the folder is run as code; ``trust_pickle=True`` lets its scvi sources
    hold arbitrary Python objects (see :meth:`ScviSource.load`): only for trusted folders.
    """
    path = Path(path)
    recover(path)
    if not (path / SETUP_FILE).is_file():
        raise ScResidualError(
            f"{path} is not a saved SpatialRegionClassifier (no {SETUP_FILE}); pass the "
            "directory written by save() or `scresidual fit --model-dir`."
        )
    try:
        setup = json.loads((path / SETUP_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ScResidualError(f"{path / SETUP_FILE} is corrupted; refit the model.") from err
    if not isinstance(setup, dict) or setup.get("format") != SETUP_FORMAT:
        found = setup.get("format", 1) if isinstance(setup, dict) else "unknown"
        raise ScResidualError(
            f"{path} holds a spatial model in format {found}; this version reads format "
            f"{SETUP_FORMAT}: refit it with `scresidual fit` (or install the version that "
            "wrote it)."
        )
    model = cls.__new__(cls)
    model.adata, model._frozen, model.trust_pickle = None, {}, trust_pickle
    model._model_dir, model.progress = path, progress
    model.residual_model_ = core = ResidualModel.load(path, progress=progress)
    model.setup = check_spatial_setup(
        setup,
        path / SETUP_FILE,
        n_sources=len([k for k in core.config.sources if k not in core.config.side_blocks]),
        n_features=len([k for k in core.config.residuals if k not in core.config.side_blocks]),
        n_side_features=len([k for k in core.config.side_blocks if k.startswith("features_")]),
    )
    cfg = core.config
    model.init_params_ = {"arm": cfg.arm, "head": cfg.head, "guard": cfg.guard, "seed": cfg.seed}
    if setup["encoder"] not in ENCODER_SOLVERS:
        raise ScResidualError(
            f"{path / SETUP_FILE} names an unknown encoder; the model folder is damaged: "
            "refit the model."
        )
    model._pca = {}
    for j, spec in enumerate(all_features(setup)):
        if spec in PCA_KINDS:
            model._pca[j] = read_pca(path / f"features_{j}_pca.npz")
    return model
