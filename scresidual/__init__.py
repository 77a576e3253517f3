"""scresidual: extend a frozen pretrained single-cell model with new signals (REFINE)."""

__version__ = "0.1.0"
