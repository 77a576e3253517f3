"""Lightning training plans: cross-entropy on a classifier's logits, denoising reconstruction.

For the ``kd`` arm the training loss is Hinton et al.'s distillation loss
``alpha CE + (1 - alpha) T^2 KL(softmax(teacher / T) || softmax(student / T))``; validation
(early stopping, the guard) always uses plain cross-entropy so arms stay comparable.

Every plan holds the module it trains as ``network`` (what
:class:`~scresidual.train.KeepBestWeights` copies) and logs ``val_loss`` when validating.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F


class ClassifierPlan(pl.LightningModule):
    """Train a classifier with cross-entropy.

    Parameters
    ----------
    network
        A :class:`~scresidual.module.ResidualNetwork` (its frozen parts carry no parameters,
        so everything optimised here is target-side: residual encoder, adapter, head) or any
        module mapping a batch's ``views`` to logits. A network without
        ``source_head_parameters`` and ``teacher`` is trained with one weight decay and
        plain cross-entropy.
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
        network: nn.Module,
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
        teacher = getattr(self.network, "teacher", None)
        if teacher is not None:
            loss = distillation_loss(
                loss,
                logits,
                batch["views"][teacher],
                alpha=self.network.kd_alpha,
                temperature=self.network.kd_temperature,
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
        source_head = getattr(self.network, "source_head_parameters", None)
        source = {id(p) for p in source_head()} if source_head else set()
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


class DenoisingPlan(pl.LightningModule):
    """Train ``decoder(encoder(x + noise))`` to give back ``x`` under the mean-squared error.

    Parameters
    ----------
    encoder, decoder
        The two halves; trained together as ``network = Sequential(encoder, decoder)``.
    noise
        Standard deviation of the Gaussian corruption of training inputs (validation inputs
        are clean); drawn from torch's global generator, so seeding it makes a fit repeatable.
    lr, weight_decay
        AdamW learning rate and weight decay.

    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        noise: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
    ):
        super().__init__()
        self.network = nn.Sequential(encoder, decoder)
        self.noise, self.lr, self.weight_decay = float(noise), lr, weight_decay
        self._val_sse = self._val_n = 0.0

    def forward(self, x):
        return self.network(x)

    def training_step(self, batch, batch_idx):
        x = batch["views"]
        noisy = x + self.noise * torch.randn_like(x) if self.noise else x
        return F.mse_loss(self.network(noisy), x)

    def on_validation_epoch_start(self):
        self._val_sse = self._val_n = 0.0

    def validation_step(self, batch, batch_idx):
        x = batch["views"]
        self._val_sse += F.mse_loss(self.network(x), x, reduction="sum").item()
        self._val_n += x.numel()

    def on_validation_epoch_end(self):
        self.log("val_loss", self._val_sse / max(self._val_n, 1.0), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.network.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )


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
        F.log_softmax(student / t, 1),
        F.log_softmax(teacher.float() / t, 1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * ce + (1 - alpha) * t * t * kl


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
