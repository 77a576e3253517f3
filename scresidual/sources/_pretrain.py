"""Pretrain a small source classifier (backbone + last linear layer) and use it frozen.

The stress tests need a source model of known quality: a backbone (any module exposing
``n_out``, e.g. a registered residual encoder) and a linear head, trained on a possibly
corrupted source split. Frozen, it yields the views the core consumes: penultimate features
(``source``), logits (the ``kd`` teacher) and the last layer itself (``lora``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._errors import ScResidualError
from ._torch import _batches, _freeze


class SourceClassifier(nn.Module):
    """``head(backbone(x))`` with the penultimate features available separately.

    Parameters
    ----------
    backbone
        Feature extractor exposing ``n_out``.
    n_classes
        Number of source classes.

    """

    def __init__(self, backbone: nn.Module, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.n_out, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def head_weights(self) -> dict[str, np.ndarray]:
        """The last layer as ``{"weight", "bias"}`` arrays (the ``lora`` arm's ``source_head``)."""
        return {
            "weight": self.head.weight.detach().cpu().numpy().copy(),
            "bias": self.head.bias.detach().cpu().numpy().copy(),
        }


def pretrain_source(
    backbone: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> SourceClassifier:
    """Train ``backbone`` plus a linear head with cross-entropy; return it frozen.

    Training is :func:`scresidual.train.train_network`'s (one pass over the rows per epoch,
    no validation).

    Parameters
    ----------
    backbone
        Feature extractor exposing ``n_out``; its input is ``x`` as float32.
    x
        Source inputs, samples first.
    y
        Integer labels ``0 … n_classes - 1`` (possibly corrupted).
    n_classes
        Number of classes of the head.
    epochs, lr, batch_size, weight_decay
        AdamW training schedule.
    seed
        Seed of the head's initialisation, dropout and batch order (the backbone is
        initialised by the caller).

    Returns
    -------
    The trained classifier, in eval mode without gradients.

    """
    y = np.asarray(y)
    if len(y) == 0 or len(x) != len(y):
        raise ScResidualError(
            f"source split has {len(x)} inputs and {len(y)} labels; give a non-empty split "
            "with one label per input."
        )
    if y.min() < 0 or y.max() >= n_classes:
        raise ScResidualError(
            f"source labels must lie in 0..{n_classes - 1}, found {y.min()}..{y.max()}."
        )
    from ..train import seed_all, train_network  # imports Lightning: only when training

    seed_all(seed)
    model = SourceClassifier(backbone, n_classes)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(y, dtype=torch.long)
    train_network(
        model,
        xt,
        yt,
        np.arange(len(yt)),
        None,
        max_epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        min_steps_per_epoch=1,
        seed=seed,
        accelerator="cpu",
        progress=False,
    )
    return _freeze(model)


@torch.no_grad()
def source_outputs(
    model: SourceClassifier, x: np.ndarray, *, batch_size: int = 1024, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Run the frozen classifier once: penultimate features and logits, float32."""
    model = _freeze(model)
    feats, logits = [], []
    for rows in _batches(len(x), batch_size, progress=progress, desc="source"):
        z = model.backbone(torch.as_tensor(np.asarray(x[rows], dtype=np.float32)))
        feats.append(z.numpy())
        logits.append(model.head(z).numpy())
    return np.concatenate(feats), np.concatenate(logits)


def pretrain_mlp_source(
    x,
    y,
    *,
    n_classes: int,
    n_hidden: int,
    n_out: int,
    epochs: int,
    seed: int = 0,
) -> SourceClassifier:
    """Pretrain an MLP backbone (one hidden layer) + linear head on flat features ``(n, d)``."""
    from .._validate import check_labels
    from ..module import MLPEncoder
    from ..train import seed_all

    x = np.asarray(x, dtype=np.float32)
    y = check_labels(y, n_classes)
    seed_all(seed)  # the backbone's initialisation too: same seed, same source
    backbone = MLPEncoder(x.shape[1], n_hidden=(n_hidden,), n_out=n_out, dropout=0.1)
    return pretrain_source(backbone, x, y, n_classes=n_classes, epochs=epochs, seed=seed)
