"""The residual network: frozen source features f(x), trainable residual h(x), shallow head g.

All arms are this one network with parts switched on or off:

============  ===========  ================  ==========================
arm           source f     residual h        head g
============  ===========  ================  ==========================
refine        yes          yes               linear on [f(x), h(x)]
scratch       no           yes               linear on h(x)
linear-probe  yes          no                linear on f(x)
adapter       yes          no                bottleneck MLP on f, linear
kd            no           yes               linear on h(x); distilled
lora          yes (raw)    no                source's last layer + LoRA
============  ===========  ================  ==========================

``kd`` is ``scratch`` trained against a teacher's logits as well as the labels (the loss lives
in :class:`scresidual.train.ClassifierPlan`); ``lora`` applies the frozen source's own last
linear layer to its unstandardised penultimate features plus a trainable low-rank update.

Source features arrive precomputed (the frozen encoder ran once, in eval mode, without
gradients), so f's weights can never change here. They are standardised with statistics
fixed at fit time, and the head's source and residual blocks are separate linear maps so
they can be regularised separately (see :class:`scresidual.train.ClassifierPlan`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

ARMS = ("refine", "scratch", "linear-probe", "adapter", "kd", "lora")
"""Names of the comparison arms, as used on the command line."""


def arm_uses(arm: str) -> tuple[bool, bool]:
    """Return ``(uses_source, uses_residual)`` for an arm."""
    from .._errors import ScResidualError

    if arm not in ARMS:
        raise ScResidualError(f"unknown arm {arm!r}; choose one of {', '.join(ARMS)}.")
    return arm not in ("scratch", "kd"), arm in ("refine", "scratch", "kd")


class Standardize(nn.Module):
    """Fixed affine normalisation ``(x - mean) / std`` with statistics stored as buffers."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> Standardize:
        """Set the statistics from a sample; images share one scalar, flat ones one per column."""
        x = x.float()
        if x.ndim > 2:
            self.mean.fill_(x.mean().item())
            self.std.fill_(max(x.std().item(), 1e-6))
            return self
        return self.set(x.mean(0), x.std(0))

    @torch.no_grad()
    def set(self, mean, std) -> Standardize:
        """Set per-column statistics computed elsewhere (e.g. over tiles of a large slide)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(self.mean.shape)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(self.std.shape)
        self.mean.copy_(mean)
        # Constant columns would explode; give them unit scale instead.
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class Adapter(nn.Module):
    """Bottleneck MLP with a skip connection: ``z + W2 relu(W1 z)``."""

    def __init__(self, n_in: int, n_bottleneck: int = 32, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, n_bottleneck),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(n_bottleneck, n_in),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.net(z)


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: ``W z + b + (alpha/r) B A z``.

    ``B`` starts at zero, so before training the layer reproduces the frozen one exactly
    (Hu et al. 2021). ``W`` and ``b`` are buffers: saved with the model, never optimised.

    Parameters
    ----------
    weight, bias
        The frozen layer, ``(n_out, n_in)`` and ``(n_out,)``.
    rank
        Rank ``r`` of the update.
    alpha
        Scaling numerator; the update is multiplied by ``alpha / rank``.

    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, *, rank: int = 8, alpha: float = 16.0
    ):
        super().__init__()
        n_out, n_in = weight.shape
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())
        self.lora_A = nn.Parameter(torch.empty(rank, n_in))
        self.lora_B = nn.Parameter(torch.zeros(n_out, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.scale = alpha / rank

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(z, self.weight, self.bias) + self.scale * (
            z @ self.lora_A.T @ self.lora_B.T
        )


class ResidualNetwork(nn.Module):
    """REFINE network and its comparison arms.

    Parameters
    ----------
    arm
        One of :data:`ARMS`.
    source_shapes
        Shape (without the cell axis) of each frozen source's features, by name.
    residual_shapes
        Shape of each residual modality's input, by name.
    encoders
        A built residual encoder per residual modality (must expose ``n_out``).
    n_classes
        Number of classes.
    head
        ``"linear"`` (the paper's robust choice) or ``"mlp"`` (one hidden layer).
    source_dropout
        Dropout on the standardised source features while training.
    adapter_dim
        Bottleneck width of the ``adapter`` arm.
    teacher
        For ``kd``: name of the view holding the teacher's logits (read by the training plan).
    kd_alpha, kd_temperature
        For ``kd``: weight of the cross-entropy term and the distillation temperature.
    source_head
        For ``lora``: the source's last layer ``{"weight": (n_classes, n_source), "bias":
        (n_classes,)}``, rows in class order; zeros when omitted (a saved state fills them).
    lora_rank, lora_alpha
        For ``lora``: rank and scaling of the low-rank update.

    """

    def __init__(
        self,
        *,
        arm: str,
        source_shapes: Mapping[str, tuple[int, ...]],
        residual_shapes: Mapping[str, tuple[int, ...]],
        encoders: Mapping[str, nn.Module],
        n_classes: int,
        head: str = "linear",
        source_dropout: float = 0.0,
        adapter_dim: int = 32,
        teacher: str | None = None,
        kd_alpha: float = 0.5,
        kd_temperature: float = 2.0,
        source_head: Mapping[str, object] | None = None,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
    ):
        super().__init__()
        self.arm = arm
        self.teacher = teacher if arm == "kd" else None
        self.kd_alpha, self.kd_temperature = kd_alpha, kd_temperature
        use_source, use_residual = arm_uses(arm)
        self.source_names = list(source_shapes) if use_source else []
        self.residual_names = list(residual_shapes) if use_residual else []
        self.source_norm = nn.ModuleDict(
            {k: Standardize(tuple(source_shapes[k])) for k in self.source_names}
        )
        self.residual_norm = nn.ModuleDict(
            {k: Standardize(tuple(residual_shapes[k])) for k in self.residual_names}
        )
        self.encoders = nn.ModuleDict({k: encoders[k] for k in self.residual_names})
        n_source = sum(int(torch.Size(source_shapes[k]).numel()) for k in self.source_names)
        n_residual = sum(self.encoders[k].n_out for k in self.residual_names)
        if n_source + n_residual == 0:
            from .._errors import ScResidualError

            raise ScResidualError(
                f"arm {arm!r} has no inputs: give a source for arms that use one, and residual "
                "features for 'refine'/'scratch'."
            )
        self.source_dropout = nn.Dropout(0.0 if arm == "lora" else source_dropout)
        self.adapter = Adapter(n_source, adapter_dim) if arm == "adapter" else None
        self.head_kind = "lora" if arm == "lora" else head
        if arm == "lora":
            head_w = dict(source_head or {})
            weight = torch.as_tensor(head_w.get("weight", torch.zeros(n_classes, n_source)))
            bias = torch.as_tensor(head_w.get("bias", torch.zeros(n_classes)))
            if tuple(weight.shape) != (n_classes, n_source) or tuple(bias.shape) != (n_classes,):
                from .._errors import ScResidualError

                raise ScResidualError(
                    f"source_head has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}"
                    f", expected ({n_classes}, {n_source}) and ({n_classes},); pass the source's "
                    "last linear layer, one row per target class."
                )
            self.head_lora = LoRALinear(weight, bias, rank=lora_rank, alpha=lora_alpha)
        elif head == "linear":
            # Two blocks of one linear map, so each block can have its own weight decay.
            self.head_source = nn.Linear(n_source, n_classes, bias=False) if n_source else None
            self.head_residual = nn.Linear(n_residual, n_classes) if n_residual else None
            if self.head_residual is None:
                self.head_source = nn.Linear(n_source, n_classes)
        elif head == "mlp":
            self.head_mlp = nn.Sequential(
                nn.Linear(n_source + n_residual, 64), nn.ReLU(), nn.Linear(64, n_classes)
            )
        else:
            from .._errors import ScResidualError

            raise ScResidualError(f"unknown head {head!r}; use 'linear' or 'mlp'.")

    @torch.no_grad()
    def fit_normalisation(self, views: Mapping[str, torch.Tensor], moments=None) -> None:
        """Fix the standardisation statistics from the training inputs.

        ``moments``: per view ``(mean, std)`` to use instead (``None``: from ``views``).
        """
        norms = [(self.residual_norm, self.residual_names)]
        if self.arm != "lora":  # lora: raw features
            norms.append((self.source_norm, self.source_names))
        for norm, names in norms:
            for k in names:
                if moments is None:
                    norm[k].fit(views[k])
                else:
                    norm[k].set(*moments[k])

    def source_features(self, views: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Standardised (and, for ``adapter``, adapted) frozen source features."""
        if not self.source_names:
            return None
        z = torch.cat([self.source_norm[k](views[k]).flatten(1) for k in self.source_names], 1)
        z = self.source_dropout(z)
        return self.adapter(z) if self.adapter is not None else z

    def residual_features(self, views: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Output of the trainable residual encoders, concatenated."""
        if not self.residual_names:
            return None
        return torch.cat(
            [self.encoders[k](self.residual_norm[k](views[k])) for k in self.residual_names], 1
        )

    def forward(self, views: Mapping[str, torch.Tensor]) -> torch.Tensor:
        zs, zr = self.source_features(views), self.residual_features(views)
        if self.head_kind == "lora":
            return self.head_lora(zs)
        if self.head_kind == "mlp":
            return self.head_mlp(torch.cat([z for z in (zs, zr) if z is not None], 1))
        logits = 0
        if zs is not None:
            logits = logits + self.head_source(zs)
        if zr is not None:
            logits = logits + self.head_residual(zr)
        return logits

    def source_head_parameters(self) -> list[nn.Parameter]:
        """Head weights acting on the frozen source features (regularised separately)."""
        if self.head_kind == "linear" and self.head_source is not None:
            return list(self.head_source.parameters())
        return []

    @torch.no_grad()
    def start_from(
        self,
        probe: ResidualNetwork,
        scratch: ResidualNetwork,
        source_share: float = 0.5,
        *,
        scales: tuple[float, float] = (1.0, 1.0),
    ) -> bool:
        """Start REFINE at a mixture of a fitted linear probe's and scratch model's logits.

        Trained jointly from a random start on a few hundred labelled cells, the residual
        encoder fits the labels within a few epochs and early stopping ends training before
        the head has learned to use the source: REFINE then under-uses an informative source.
        Started here instead, the first predictions already combine what f and h each learned
        alone: ``share * s_p * probe logits + (1 - share) * s_s * scratch logits``, with
        ``scales = (s_p, s_s)`` the two models' temperatures. Joint training only refines
        that. Returns False (and changes nothing) when the parts do not fit this network.
        """
        linear = all(n.head_kind == "linear" for n in (self, probe, scratch))
        if not linear or self.adapter is not None or self.head_source is None:
            return False
        if self.head_residual is None or probe.head_source is None or scratch.head_residual is None:
            return False
        self.source_norm.load_state_dict(probe.source_norm.state_dict())
        self.residual_norm.load_state_dict(scratch.residual_norm.state_dict())
        self.encoders.load_state_dict(scratch.encoders.state_dict())
        a, b = float(source_share) * scales[0], (1 - float(source_share)) * scales[1]
        self.head_source.weight.copy_(probe.head_source.weight * a)
        self.head_residual.weight.copy_(scratch.head_residual.weight * b)
        self.head_residual.bias.copy_(probe.head_source.bias * a + scratch.head_residual.bias * b)
        return True


class EnsembleNetwork(nn.Module):
    """Cross-fitted members of one arm, predicting the mean of their class probabilities.

    Returns log-probabilities, so ``softmax`` of the output is that mean and everything that
    reads logits (prediction, saving) treats an ensemble like a single network.
    """

    def __init__(self, members: list[ResidualNetwork]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.arm, self.teacher = members[0].arm, members[0].teacher

    def forward(self, views: Mapping[str, torch.Tensor]) -> torch.Tensor:
        p = torch.stack([m(views).softmax(1) for m in self.members]).mean(0)
        return p.clamp_min(1e-12).log()
