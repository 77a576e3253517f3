"""Fit a network with PyTorch Lightning: early stopping, best weights kept, seeded."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import lightning.pytorch as pl
import numpy as np
import torch

from ..module import ResidualNetwork
from ._data import ViewsDataset, batch_loader
from ._plan import ClassifierPlan

_NOISY_WARNINGS = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*GPU available but not used.*",
    ".*LeafSpec.*",
)


@contextmanager
def quiet_lightning(quiet: bool) -> Iterator[None]:
    """Silence Lightning's start-up chatter and its advice about data-loader workers."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for pattern in _NOISY_WARNINGS:
            warnings.filterwarnings("ignore", pattern)
        if quiet:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


class KeepBestWeights(pl.Callback):
    """Keep the weights of the epoch with the lowest validation loss, in memory."""

    def __init__(self, monitor: str = "val_loss"):
        self.monitor = monitor
        self.best_score = float("inf")
        self.best_epoch = -1
        self.best_state: dict | None = None
        self.history: list[float] = []

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        score = float(trainer.callback_metrics[self.monitor])
        self.history.append(score)
        if score < self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.best_state = copy.deepcopy(pl_module.network.state_dict())


@dataclass
class TrainResult:
    """What one fit produced."""

    best_epoch: int
    best_val_loss: float
    n_epochs: int
    val_history: list[float] = field(default_factory=list)


def train_network(
    network: ResidualNetwork,
    views: Mapping[str, torch.Tensor],
    y: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    *,
    max_epochs: int = 200,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    source_weight_decay: float = 1e-3,
    patience: int = 20,
    class_weights: torch.Tensor | None = None,
    seed: int = 0,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    progress: bool = True,
) -> TrainResult:
    """Train ``network`` in place on rows ``train_idx``; restore the best validation epoch.

    Without ``val_idx`` the network trains for exactly ``max_epochs`` epochs.
    """
    plan = ClassifierPlan(
        network, lr=lr, weight_decay=weight_decay,
        source_weight_decay=source_weight_decay, class_weights=class_weights,
    )
    train = batch_loader(
        ViewsDataset(views, y, train_idx), batch_size=batch_size, shuffle=True, seed=seed
    )
    callbacks: list[pl.Callback] = []
    val = None
    if val_idx is not None and len(val_idx):
        val = batch_loader(ViewsDataset(views, y, val_idx), batch_size=4096, shuffle=False)
        keep = KeepBestWeights()
        callbacks += [
            keep, pl.callbacks.EarlyStopping("val_loss", patience=patience, mode="min"),
        ]
    with quiet_lightning(not progress):
        trainer = pl.Trainer(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            callbacks=callbacks,
            log_every_n_steps=1,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
        )
        trainer.fit(plan, train_dataloaders=train, val_dataloaders=val)
    network.cpu()
    if val is None:
        return TrainResult(max_epochs - 1, float("nan"), trainer.current_epoch)
    if keep.best_state is not None:
        network.load_state_dict(keep.best_state)
    return TrainResult(keep.best_epoch, keep.best_score, trainer.current_epoch, keep.history)
