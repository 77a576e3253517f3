"""A small denoising autoencoder pretrained on unlabelled values, returned as a frozen source.

Useful when no published model covers a modality (protein panels, small gene panels): the
encoder is trained once on the values alone — no labels, no coordinates — and then used
frozen like any other source through :class:`~scresidual.sources.TorchSource`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .._errors import ScResidualError
from .._normalise import log1p_normalise
from ._torch import TorchSource


class _Standardise(nn.Module):
    """Fixed per-feature ``(x - mean) / std`` stored as buffers, so it travels with the encoder."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def _mlp(widths: Sequence[int], dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.GELU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return layers


def _prepare(X, transform: str | Callable | None) -> np.ndarray:
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    try:
        X = X.astype(np.float32)
    except (TypeError, ValueError) as err:
        raise ScResidualError("X must be a numeric matrix (cells x features).") from err
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise ScResidualError(f"X must be (n_cells >= 2, n_features >= 1), got shape {X.shape}.")
    if transform == "log1p":
        X = log1p_normalise(X)
    elif callable(transform):
        X = np.asarray(transform(X), dtype=np.float32)
    elif transform is not None:
        raise ScResidualError(f"unknown transform {transform!r}; use None, 'log1p' or a callable.")
    if not np.isfinite(X).all():
        raise ScResidualError("X holds NaN/inf values (after the transform); clean it first.")
    return X


def pretrain_autoencoder(
    X,
    *,
    n_latent: int = 16,
    n_hidden: Sequence[int] = (128,),
    transform: str | Callable[[np.ndarray], np.ndarray] | None = None,
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    noise: float = 0.2,
    dropout: float = 0.1,
    max_epochs: int = 200,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    validation_size: float = 0.1,
    patience: int = 20,
    seed: int = 0,
    name: str = "autoencoder",
    progress: bool = False,
) -> TorchSource:
    """Pretrain a denoising autoencoder on ``X`` alone and return its encoder, frozen.

    Inputs are transformed, standardised per feature (statistics stored inside the encoder),
    corrupted with Gaussian noise and reconstructed under a mean-squared error
    (:func:`scresidual.train.train_autoencoder`). Training stops early on a held-out fraction
    of cells and the best epoch is kept.

    Parameters
    ----------
    X
        Cells x features, dense or sparse (e.g. protein values, expression counts).
    n_latent
        Width of the embedding.
    n_hidden
        Hidden widths of the encoder (the decoder mirrors them).
    transform
        ``None`` (values as given), ``"log1p"`` (per-cell total normalisation to 1e4 then
        ``log1p``, the counts convention) or a callable on float32 arrays. Applied again by the
        returned source to every slide it embeds.
    genes
        Feature names of ``X``'s columns; when given, slides are aligned to them at embed time.
    layer
        Layer the returned source reads instead of ``X`` at embed time.
    noise
        Standard deviation of the Gaussian corruption on standardised inputs.
    dropout
        Dropout in the hidden layers.
    max_epochs, batch_size, lr, weight_decay
        Optimisation (AdamW).
    validation_size
        Fraction of cells held out for early stopping (0 trains ``max_epochs`` epochs).
    patience
        Epochs without improvement of the validation error before stopping.
    seed
        Seed for initialisation, split, batches, noise and dropout.
    name
        Name of the returned source, used in messages.
    progress
        Show the training progress bar (with the validation error).

    Returns
    -------
    TorchSource
        The frozen encoder (standardisation included), mapping raw rows to ``n_latent``.

    """
    if int(n_latent) < 1:
        raise ScResidualError(f"n_latent must be a positive integer, got {n_latent}.")
    Xt = _prepare(X, transform)
    n, d = Xt.shape
    if genes is not None and len(genes) != d:
        raise ScResidualError(f"genes has {len(genes)} names but X has {d} columns.")
    mean, std = Xt.mean(0), Xt.std(0)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    from ..train import seed_all, train_autoencoder  # imports Lightning: only when training

    seed_all(seed)
    widths = [d, *map(int, n_hidden), int(n_latent)]
    # Trained on standardised values; the standardisation then goes in front of the encoder,
    # so the source embeds rows as given (after the transform).
    core = nn.Sequential(*_mlp(widths, dropout))
    decoder = nn.Sequential(*_mlp(widths[::-1], dropout))
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(validation_size * n)) if validation_size and n >= 20 else 0
    result = train_autoencoder(
        core,
        decoder,
        (Xt - mean) / std,
        order[n_val:],
        order[:n_val],
        noise=noise,
        lr=lr,
        weight_decay=weight_decay,
        max_epochs=int(max_epochs),
        batch_size=batch_size,
        patience=patience,
        min_steps_per_epoch=1,
        seed=seed,
        accelerator="cpu",
        progress=progress,
    )
    encoder = nn.Sequential(_Standardise(mean, std), *core)
    source = TorchSource(
        encoder, genes=genes, layer=layer, transform=transform, n_latent=int(n_latent), name=name
    )
    source.validation_mse_ = result.best_val_loss  # NaN without validation
    return source
