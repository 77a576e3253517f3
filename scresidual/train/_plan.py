"""Lightning training plan: cross-entropy on the residual network's logits.

For the ``kd`` arm the training loss is Hinton et al.'s distillation loss
``alpha CE + (1 - alpha) T^2 KL(softmax(teacher / T) || softmax(student / T))``; validation
(early stopping, the guard) always uses plain cross-entropy so arms stay comparable.
"""

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
        self._train_loss_sum, self._train_n = torch.zeros(()), 0

    def forward(self, views):
        return self.network(views)

    def _loss(self, batch, reduction="mean"):
        logits = self.network(batch["views"])
        loss = F.cross_entropy(logits, batch["y"], weight=self.class_weights, reduction=reduction)
        return loss, logits

    def training_step(self, batch, batch_idx):
        loss, logits = self._loss(batch)
        if self.network.teacher is not None:
            loss = distillation_loss(
                loss, logits, batch["views"][self.network.teacher],
                alpha=self.network.kd_alpha, temperature=self.network.kd_temperature,
            )
        # Summed here and logged once an epoch: a self.log() call per step cost a quarter of
        # the training time of a few hundred labels (thousands of tiny steps).
        self._train_loss_sum += loss.detach() * len(batch["y"])
        self._train_n += len(batch["y"])
        return loss

    def on_train_epoch_start(self):
        self._train_loss_sum, self._train_n = torch.zeros(()), 0

    def on_train_epoch_end(self):
        self.log("train_loss", float(self._train_loss_sum) / max(self._train_n, 1), sync_dist=True)

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


def distillation_loss(
    ce: torch.Tensor,
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """Knowledge-distillation loss ``alpha ce + (1 - alpha) T^2 KL(p_teacher || p_student)``.

    Parameters
    ----------
    ce
        The cross-entropy term on the true labels (already reduced).
    student, teacher
        Logits ``(n, n_classes)``, columns in the same class order.
    alpha
        Weight of ``ce``.
    temperature
        Softening temperature ``T``.

    Returns
    -------
    The scalar loss (KL averaged over the batch).

    """
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student / t, 1), F.log_softmax(teacher.float() / t, 1),
        reduction="batchmean", log_target=True,
    )
    return alpha * ce + (1 - alpha) * t * t * kl


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
