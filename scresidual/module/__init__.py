"""Plain PyTorch modules: the residual network, its arms, and the residual encoders."""

from ._encoders import (
    ENCODERS,
    CNNEncoder,
    HopEncoder,
    LinearEncoder,
    MLPEncoder,
    build_encoder,
    register_encoder,
)
from ._network import (
    ARMS,
    Adapter,
    EnsembleNetwork,
    LoRALinear,
    ResidualNetwork,
    Standardize,
    arm_uses,
)

__all__ = [
    "ARMS",
    "ENCODERS",
    "Adapter",
    "CNNEncoder",
    "EnsembleNetwork",
    "HopEncoder",
    "LinearEncoder",
    "LoRALinear",
    "MLPEncoder",
    "ResidualNetwork",
    "Standardize",
    "arm_uses",
    "build_encoder",
    "register_encoder",
]
