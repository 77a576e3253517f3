"""Fit networks with PyTorch Lightning: early stopping, best weights kept, seeded.

The one training path of the package: the residual classifiers, the source classifiers of
the stress tests and the autoencoder sources all go through :func:`fit_plan`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from .._logging import quiet_lightning
from .._settings import progress_enabled
from ._data import ViewsDataset, as_tensor, batch_loader
from ._plan import ClassifierPlan, DenoisingPlan


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None``: unchanged)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(max(1, min(int(n), before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class KeepBestWeights(pl.Callback):
    """Keep the weights of the epoch with the lowest validation loss, in memory.

    At the end of the fit the best weights are loaded back into the network on every process,
    so the weights a data-parallel run returns are the best epoch's, the same on all ranks
    (rank 0's choice is broadcast) and also those that ``ddp_spawn`` ships back to the main
    process. The summary (best epoch, best loss, history, epochs run) is written into
    ``trainer.callback_metrics``, which Lightning also returns from spawned workers.
    """

    def __init__(self, monitor: str = "val_loss", *, include_start: bool = False):
        self.monitor = monitor
        self.include_start = include_start  # score the starting weights as "epoch -1"
        self.best_score = float("inf")
        self.best_epoch = -1
        self.best_state: dict | None = None
        self.history: list[float] = []

    def on_validation_end(self, trainer, pl_module):
        if self.monitor not in trainer.callback_metrics:
            return
        if trainer.sanity_checking:
            if self.include_start:
                self.best_score = float(trainer.callback_metrics[self.monitor])
                self.best_state = copy.deepcopy(pl_module.network.state_dict())
            return
        # Logged with sync_dist=True, so every rank sees the same (all-reduced) value.
        score = float(trainer.callback_metrics[self.monitor])
        self.history.append(score)
        if score < self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.best_state = copy.deepcopy(pl_module.network.state_dict())

    def on_fit_end(self, trainer, pl_module):
        if trainer.world_size > 1:
            best = trainer.strategy.broadcast(
                (self.best_state, self.best_epoch, self.best_score, self.history), src=0
            )
            self.best_state, self.best_epoch, self.best_score, self.history = best
        if self.best_state is not None:
            pl_module.network.load_state_dict(self.best_state)
        trainer.callback_metrics.update(
            {
                "_best_epoch": torch.tensor(self.best_epoch),
                "_best_val_loss": torch.tensor(self.best_score if self.history else float("nan")),
                "_val_history": torch.tensor(self.history, dtype=torch.float64),
                "_n_epochs": torch.tensor(trainer.current_epoch),
            }
        )


class ViewsDataModule(pl.LightningDataModule):
    """Training and validation loaders, sharded by rank once the trainer knows the world size.

    The views are read in place (no copy per epoch or per process beyond what the launcher
    needs to start workers); each rank draws a seeded, epoch-dependent shard of the rows.
    """

    def __init__(
        self,
        views: Mapping[str, torch.Tensor] | torch.Tensor,
        y: torch.Tensor | None,
        train_idx: np.ndarray,
        val_idx: np.ndarray | None,
        *,
        batch_size: int,
        seed: int,
        min_batches: int = 1,
        val_batch_size: int = 4096,
    ):
        super().__init__()
        self.min_batches = min_batches
        self.train_set = ViewsDataset(views, y, train_idx)
        self.val_set = ViewsDataset(views, y, val_idx) if val_idx is not None else None
        self.batch_size, self.seed, self.val_batch_size = batch_size, seed, val_batch_size

    def _shard(self) -> dict:
        trainer = self.trainer
        if trainer is None:
            return {"num_replicas": 1, "rank": 0}
        return {"num_replicas": trainer.world_size, "rank": trainer.global_rank}

    def train_dataloader(self):
        return batch_loader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.seed,
            min_batches=self.min_batches,
            **self._shard(),
        )

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return batch_loader(
            self.val_set, batch_size=self.val_batch_size, shuffle=False, **self._shard()
        )


@dataclass
class TrainResult:
    """What one fit produced."""

    best_epoch: int
    best_val_loss: float
    n_epochs: int
    val_history: list[float] = field(default_factory=list)


def fit_plan(
    plan: pl.LightningModule,
    views: Mapping[str, torch.Tensor] | torch.Tensor,
    y: torch.Tensor | None,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    *,
    max_epochs: int = 200,
    batch_size: int = 256,
    patience: int = 20,
    min_steps_per_epoch: int = 10,
    keep_start: bool = False,
    seed: int = 0,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    cpu_threads: int | None = 1,
    progress: bool | None = None,
) -> TrainResult:
    """Fit ``plan.network`` in place on rows ``train_idx``; restore the best validation epoch.

    Parameters
    ----------
    plan
        A Lightning module holding the trained module as ``network`` and logging
        ``val_loss`` when validating (:class:`ClassifierPlan`, :class:`DenoisingPlan`).
    views
        Inputs, samples first: named arrays or one array (see :class:`ViewsDataset`).
    y
        Labels, or ``None`` for a plan that needs none.
    train_idx, val_idx
        Rows to train on and to validate on (``None`` or empty: no validation).
    max_epochs, batch_size, patience
        Schedule; training stops after ``patience`` epochs without a lower ``val_loss``.
    min_steps_per_epoch
        Smallest number of optimiser steps an epoch makes (one pass over the rows if more).
    keep_start
        Score the starting weights on the validation rows first and keep them if no epoch
        beats them (for a network started from fitted parts).
    seed
        Seed of the batch order (the caller seeds initialisation, dropout and noise).
    accelerator, devices, strategy, num_nodes
        Passed to the Lightning trainer. With more than one process (e.g.
        ``strategy="ddp"``, ``devices=4``) each rank trains on its own shard of the batches;
        validation metrics are all-reduced, so early stopping and the best epoch agree across
        ranks, and the best weights end up in ``plan.network`` (also with ``ddp_spawn``,
        whose workers send rank 0's weights back).
    cpu_threads
        Cap on torch's intra-op threads while training on CPU (restored after): mini-batches
        of a few hundred cells through small layers gain nothing from more threads, and on a
        busy machine extra threads wait on each other (6x slower steps measured on 2 shared
        cores). ``None`` leaves torch's setting alone.
    progress
        Show Lightning's progress bar.

    Returns
    -------
    The best epoch, its validation loss and the loss history (``NaN`` without validation,
    when exactly ``max_epochs`` epochs are trained).

    """
    network = plan.network
    has_val = val_idx is not None and len(val_idx) > 0
    data = ViewsDataModule(
        views,
        y,
        train_idx,
        val_idx if has_val else None,
        batch_size=batch_size,
        seed=seed,
        min_batches=min_steps_per_epoch,
    )
    keep = KeepBestWeights(include_start=keep_start and has_val)
    callbacks: list[pl.Callback] = [keep]
    if has_val:
        callbacks.append(pl.callbacks.EarlyStopping("val_loss", patience=patience, mode="min"))
    with quiet_lightning():
        trainer = pl.Trainer(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_nodes=num_nodes,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress_enabled(progress),
            callbacks=callbacks,
            log_every_n_steps=1,
            num_sanity_val_steps=-1 if keep_start and has_val else 0,
            limit_val_batches=1.0 if has_val else 0,
            # Sharding is done by ViewsDataModule (Lightning would wrap the batch sampler).
            use_distributed_sampler=False,
        )
        on_cpu = isinstance(trainer.accelerator, pl.accelerators.CPUAccelerator)
        with _torch_threads(cpu_threads if on_cpu else None):
            trainer.fit(plan, datamodule=data)
    network.cpu()
    # Read the summary from callback_metrics: with ddp_spawn the callback ran in the workers.
    metrics = trainer.callback_metrics
    n_epochs = int(metrics.get("_n_epochs", trainer.current_epoch))
    if not has_val:
        return TrainResult(max_epochs - 1, float("nan"), n_epochs)
    history = [float(v) for v in metrics.get("_val_history", torch.tensor(keep.history))]
    return TrainResult(
        int(metrics.get("_best_epoch", keep.best_epoch)),
        float(metrics.get("_best_val_loss", keep.best_score)),
        n_epochs,
        history,
    )


def train_network(
    network: nn.Module,
    views: Mapping[str, torch.Tensor] | torch.Tensor,
    y: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    *,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    source_weight_decay: float = 1e-3,
    class_weights: torch.Tensor | None = None,
    **schedule,
) -> TrainResult:
    """Train a classifier in place with cross-entropy (:class:`ClassifierPlan`).

    ``network`` is a :class:`~scresidual.module.ResidualNetwork` or any module mapping
    ``views`` to logits; ``lr``, ``weight_decay``, ``source_weight_decay`` and
    ``class_weights`` go to the plan, everything else (schedule, devices) to
    :func:`fit_plan`.
    """
    plan = ClassifierPlan(
        network,
        lr=lr,
        weight_decay=weight_decay,
        source_weight_decay=source_weight_decay,
        class_weights=class_weights,
    )
    return fit_plan(plan, views, y, train_idx, val_idx, **schedule)


def train_autoencoder(
    encoder: nn.Module,
    decoder: nn.Module,
    x,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    *,
    noise: float = 0.2,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    **schedule,
) -> TrainResult:
    """Train a denoising autoencoder in place on rows of ``x`` (:class:`DenoisingPlan`).

    ``x`` is a float array, samples first. ``noise``, ``lr`` and ``weight_decay`` go to the
    plan, everything else (schedule, devices) to :func:`fit_plan`; with ``val_idx`` the
    encoder and decoder end with the weights of the epoch of lowest validation error.
    """
    plan = DenoisingPlan(encoder, decoder, noise=noise, lr=lr, weight_decay=weight_decay)
    return fit_plan(plan, as_tensor(x), None, train_idx, val_idx, **schedule)
