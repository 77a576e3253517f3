"""Trainable residual encoders h, one per modality, built from a name and keyword arguments.

Every encoder exposes ``n_out`` (its output width) so the head can be sized without a
forward pass. New modalities register a builder in :data:`ENCODERS`; the model stores
only ``(name, kwargs)``, so saved models rebuild their encoders exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class MLPEncoder(nn.Module):
    """Fully connected encoder for flat features (PCA, protein, tabular, stacked graph hops).

    Parameters
    ----------
    n_in
        Input width.
    n_hidden
        Widths of the hidden layers.
    n_out
        Output width.
    dropout
        Dropout after each hidden layer (and on the input, halved).

    """

    def __init__(
        self, n_in: int, *, n_hidden: Sequence[int] = (128,), n_out: int = 64, dropout: float = 0.1
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout / 2)]
        width = n_in
        for h in n_hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers += [nn.Linear(width, n_out), nn.GELU()]
        self.net = nn.Sequential(*layers)
        self.n_out = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class LinearEncoder(nn.Module):
    """The identity on flattened (standardised) inputs: ``h`` is then linear.

    With it the residual branch is the head's residual block itself, ``W_h x``: REFINE's
    network is linear in ``[f(x), x]`` and :class:`scresidual.model.ResidualModel` can fit
    it exactly (``solver="newton-cg"``), each block averaged over penalties by cross-validation.
    """

    def __init__(self, n_in: int):
        super().__init__()
        self.n_out = n_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class HopEncoder(nn.Module):
    """Spatial-graph encoder over precomputed neighbourhood hops (SIGN, Rossi et al. 2020).

    The input is ``(n, n_hops + 1, d)``: a cell's own features, then their means over 1, 2, …
    rings of the spatial graph (:func:`scresidual.pp.neighbourhood_rings`). Each hop gets its
    own linear map, the results are concatenated and passed through an MLP. Because the graph
    aggregation is precomputed once with a sparse product, training and inference run in
    mini-batches of independent cells with memory bounded by the batch, on any slide size.
    """

    def __init__(
        self,
        n_in: int,
        *,
        n_hops: int,
        n_per_hop: int = 32,
        n_hidden: Sequence[int] = (128,),
        n_out: int = 64,
        dropout: float = 0.1,
    ):
        super().__init__()
        if n_in % (n_hops + 1):
            raise ValueError(f"n_in={n_in} is not a multiple of n_hops + 1 = {n_hops + 1}")
        self.n_hops, self.d = n_hops, n_in // (n_hops + 1)
        self.hops = nn.ModuleList(nn.Linear(self.d, n_per_hop) for _ in range(n_hops + 1))
        self.mlp = MLPEncoder(
            n_per_hop * (n_hops + 1), n_hidden=n_hidden, n_out=n_out, dropout=dropout
        )
        self.n_out = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.n_hops + 1, self.d)
        return self.mlp(torch.cat([lin(x[:, k]) for k, lin in enumerate(self.hops)], dim=1))


class CNNEncoder(nn.Module):
    """Small convolutional encoder for images ``(n, channels, height, width)``.

    Parameters
    ----------
    n_in
        Number of input channels.
    widths
        Channels of the convolution blocks (each conv-BN-ReLU-pool).
    n_out
        Output width.
    dropout
        Dropout before the output layer.

    """

    def __init__(
        self, n_in: int, *, widths: Sequence[int] = (32, 64), n_out: int = 128, dropout: float = 0.2
    ):
        super().__init__()
        blocks: list[nn.Module] = []
        c = n_in
        for w in widths:
            blocks += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(c * 4, n_out), nn.ReLU())
        self.n_out = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "linear": LinearEncoder,
    "mlp": MLPEncoder,
    "hops": HopEncoder,
    "cnn": CNNEncoder,
}
"""Registry of residual encoders: ``name -> builder(n_in, **kwargs)``."""


def register_encoder(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make a residual encoder available by name (builder takes ``n_in`` first)."""
    ENCODERS[name] = builder


def build_encoder(name: str, n_in: int, **kwargs) -> nn.Module:
    """Build a registered encoder; raises a one-line error for unknown names."""
    from .._errors import ScResidualError

    if name not in ENCODERS:
        raise ScResidualError(
            f"unknown residual encoder {name!r}; choose one of {sorted(ENCODERS)} or "
            "register one with scresidual.module.register_encoder()."
        )
    return ENCODERS[name](n_in, **kwargs)
