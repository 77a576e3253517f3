"""Lightning training plan: cross-entropy on the residual network's logits."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

from ..module import ResidualNetwork


class ClassifierPlan(pl.LightningModule):
    """Train a :class:`~scresidual.module.ResidualNetwork` with cross-entropy.

    Parameters
    ----------
    network
        The network; its frozen parts carry no parameters, so everything optimised here is
        target-side (residual encoder, adapter, head).
    lr
        AdamW learning rate.
    weight_decay
        Weight decay of the residual encoders and the residual block of the head.
    source_weight_decay
        Weight decay of the head's block on the frozen source features. Larger values
        shrink the source towards zero unless it pays for itself in training loss, which
        is what keeps a useless source from hurting.
    class_weights
        Optional per-class loss weights.

    """

    def __init__(
        self,
        network: ResidualNetwork,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        source_weight_decay: float = 1e-3,
        class_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        self.network = network
        self.lr, self.weight_decay, self.source_weight_decay = lr, weight_decay, source_weight_decay
        self.register_buffer("class_weights", class_weights, persistent=False)
        self._val_loss_sum = self._val_correct = self._val_n = 0.0

    def forward(self, views):
        return self.network(views)

    def _loss(self, batch, reduction="mean"):
        logits = self.network(batch["views"])
        loss = F.cross_entropy(logits, batch["y"], weight=self.class_weights, reduction=reduction)
        return loss, logits

    def training_step(self, batch, batch_idx):
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["y"]))
        return loss

    def on_validation_epoch_start(self):
        self._val_loss_sum = self._val_correct = self._val_n = 0.0

    def validation_step(self, batch, batch_idx):
        loss, logits = self._loss(batch, reduction="sum")
        self._val_loss_sum += loss.item()
        self._val_correct += (logits.argmax(1) == batch["y"]).sum().item()
        self._val_n += len(batch["y"])

    def on_validation_epoch_end(self):
        n = max(self._val_n, 1.0)
        self.log("val_loss", self._val_loss_sum / n, prog_bar=True, sync_dist=True)
        self.log("val_accuracy", self._val_correct / n, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        source = {id(p) for p in self.network.source_head_parameters()}
        groups = [
            {
                "params": [p for p in self.network.parameters() if id(p) not in source],
                "weight_decay": self.weight_decay,
            },
            {
                "params": [p for p in self.network.parameters() if id(p) in source],
                "weight_decay": self.source_weight_decay,
            },
        ]
        groups = [g for g in groups if g["params"]]
        return torch.optim.AdamW(groups, lr=self.lr)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
