"""Training on PyTorch Lightning: data loading, the training plan and the fit loop."""

from ._data import ViewsDataset, as_tensor, batch_loader
from ._plan import ClassifierPlan, count_parameters, distillation_loss
from ._trainer import KeepBestWeights, TrainResult, quiet_lightning, train_network

__all__ = [
    "ClassifierPlan",
    "KeepBestWeights",
    "TrainResult",
    "ViewsDataset",
    "as_tensor",
    "batch_loader",
    "count_parameters",
    "distillation_loss",
    "quiet_lightning",
    "train_network",
]
