"""Training on PyTorch Lightning: data loading, the training plans and the one fit loop.

Every network the package trains goes through :func:`fit_plan`: the residual classifiers
(:func:`train_network`), the stress tests' source classifiers (also :func:`train_network`)
and the autoencoder sources (:func:`train_autoencoder`); scvi-tools models train with
scvi-tools' own (Lightning) trainer.

The Lightning parts load on first use (Lightning takes seconds to import), so loading a
fitted model and predicting never import it.
"""

from importlib import import_module

from .._logging import quiet_lightning
from ._data import ViewsDataset, as_tensor, batch_loader, seed_all

_LAZY = {
    "ClassifierPlan": "._plan",
    "DenoisingPlan": "._plan",
    "count_parameters": "._plan",
    "distillation_loss": "._plan",
    "KeepBestWeights": "._trainer",
    "TrainResult": "._trainer",
    "fit_plan": "._trainer",
    "train_autoencoder": "._trainer",
    "train_network": "._trainer",
}

__all__ = ["ViewsDataset", "as_tensor", "batch_loader", "quiet_lightning", "seed_all", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
