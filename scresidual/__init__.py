"""scresidual: extend a frozen pretrained single-cell model with new signals (REFINE).

Namespaces follow scanpy: :mod:`scresidual.pp` (graphs, features), :mod:`scresidual.tl`
(fit, predict, compare), :mod:`scresidual.metrics` (scores), :mod:`scresidual.pl` (plots),
:mod:`scresidual.read` (loaders), :mod:`scresidual.datasets` (embedded data),
:mod:`scresidual.sources` (frozen models), over the model classes in
:mod:`scresidual.model`; package-wide defaults in :data:`scresidual.settings`.
"""

import warnings
from importlib import import_module

# tqdm.auto (imported by scvi-tools and Lightning) warns "IProgress not found" in a notebook
# without ipywidgets, then draws text bars, which serve: silence the advice, nothing else.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

__version__ = "0.1.0"

_SUBMODULES = (
    "datasets",
    "metrics",
    "model",
    "module",
    "pl",
    "pp",
    "read",
    "sources",
    "tl",
    "train",
)
__all__ = [
    *_SUBMODULES,
    "ScResidualError",
    "SpatialRegionClassifier",
    "ResidualModel",
    "settings",
]

from ._errors import ScResidualError  # noqa: E402
from ._settings import settings  # noqa: E402


def __getattr__(name: str):
    # Lazy imports keep `import scresidual` (and the CLI's --help) fast.
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name in ("SpatialRegionClassifier", "ResidualModel"):
        return getattr(import_module(".model", __name__), name)
    raise AttributeError(f"module 'scresidual' has no attribute {name!r}")
