"""The measured rules and constants of the exact fit, each with the alternatives it was chosen over.

``heldout_slides.py`` refits REFINE under each alternative and chooses every rule by
leave-one-slide-out. A variant is applied for the duration of a ``with variant(...)`` block:
module constants and functions of :mod:`scresidual.model._convex` are swapped in this process
only (the fits run in-process: ``n_jobs=1``), and options go to ``fit_regions``.
"""

from __future__ import annotations

import contextlib

import numpy as np

from scresidual.model import _convex
from scresidual.model._selection import log_softmax, temperature, weighted_losses

DEFAULT = {
    "penalty_grid": "to_1e-4",
    "evidence_floor": "1e-3",
    "strongest_kept": "on",
    "penalty_choice": "average",
    "source_shares": "fine",
    "group_folds": "auto",
    "gradients": "off",
    "features": "pca",
    "side_features": "none",
    "n_hops": "3",
    "cv_repeats": "auto",
}
"""The library's choice of each rule when issue 24 was filed (ties in the leave-one-slide-out
choice keep it); the in-sample table of ``heldout_slides.py`` is REFINE under these."""

ALTERNATIVES = {  # simplest first where an order exists (fewer rings): the one-se rule's order
    "penalty_grid": ("to_1e-3",),
    "evidence_floor": ("0", "1e-2"),
    "strongest_kept": ("off",),
    "penalty_choice": ("least_loss", "one_se"),
    "source_shares": ("coarse",),
    "group_folds": ("off",),
    "gradients": ("on",),
    "features": ("neighbourhood-pca",),
    "side_features": ("neighbourhood-pca",),
    "n_hops": ("2", "4", "5"),
    "cv_repeats": ("3",),
}


def key(config: dict) -> str:
    """A config's name: its departures from :data:`DEFAULT` (``'default'`` when none)."""
    diff = [f"{r}={v}" for r, v in sorted(config.items()) if DEFAULT[r] != v]
    return ",".join(diff) or "default"


def parse(name: str) -> dict:
    config = dict(DEFAULT)
    if name != "default":
        for part in name.split(","):
            rule, value = part.split("=")
            if rule not in DEFAULT or value not in (DEFAULT[rule], *ALTERNATIVES[rule]):
                raise SystemExit(f"unknown rule variant {part!r}; see benchmarks/_rules.py")
            config[rule] = value
    return config


def one_at_a_time() -> list[str]:
    """The default and every single departure from it."""
    return ["default"] + [key({**DEFAULT, r: v}) for r, alts in ALTERNATIVES.items() for v in alts]


class _Losses(dict):
    """Mean calibrated losses by penalty, with the per-cell losses kept (for the 1-SE rule)."""

    cells: dict


def _calibrated_losses_kept(oof, y, weights):
    out = _Losses()
    out.cells = {}
    for C, lp in oof.items():
        cell = weighted_losses(log_softmax(temperature(lp, y, weights) * lp), y, weights)
        out[C], out.cells[C] = float(cell.mean()), cell
    return out


def _least_loss(cv_loss, n):
    best = min(cv_loss, key=cv_loss.get)
    return {C: float(C == best) for C in cv_loss}


def _one_se(cv_loss, n):
    """The strongest penalty whose loss is within one standard error of the least."""
    best = min(cv_loss, key=cv_loss.get)
    cells = getattr(cv_loss, "cells", {})
    se = float(np.std(cells[best], ddof=1) / np.sqrt(len(cells[best]))) if best in cells else 0.0
    chosen = min(C for C, v in cv_loss.items() if v <= cv_loss[best] + se)
    return {C: float(C == chosen) for C in cv_loss}


@contextlib.contextmanager
def variant(config: dict):
    """Apply ``config`` to the exact fit; yields the extra ``fit_regions`` options."""
    saved = {
        "EVIDENCE_FLOOR": _convex.EVIDENCE_FLOOR,
        "strongest_kept": _convex.strongest_kept,
        "penalty_weights": _convex.penalty_weights,
        "calibrated_losses": _convex.calibrated_losses,
    }
    saved_grid = _convex.fit_block.__kwdefaults__["penalties"]
    try:
        if config["penalty_grid"] == "to_1e-3":
            _convex.fit_block.__kwdefaults__["penalties"] = tuple(
                C for C in saved_grid if C >= 1e-3
            )
        _convex.EVIDENCE_FLOOR = {"1e-3": 1e-3, "0": 0.0, "1e-2": 1e-2}[config["evidence_floor"]]
        if config["strongest_kept"] == "off":
            _convex.strongest_kept = lambda pi: pi
        if config["penalty_choice"] == "least_loss":
            _convex.penalty_weights = _least_loss
        elif config["penalty_choice"] == "one_se":
            _convex.penalty_weights = _one_se
            _convex.calibrated_losses = _calibrated_losses_kept
        # Every option is passed, default or not: a config means the same fit whatever the
        # library's defaults are when it runs.
        yield {
            "source_shares": {"fine": None, "coarse": (0.0, 0.25, 0.5, 0.75, 1.0)}[
                config["source_shares"]
            ],
            "group_folds": {"auto": "auto", "off": False}[config["group_folds"]],
            "gradients": config["gradients"] == "on",
            "features": (config["features"],),
            "side_features": ()
            if config["side_features"] == "none"
            else (config["side_features"],),
            "n_hops": int(config["n_hops"]),
            "cv_repeats": None if config["cv_repeats"] == "auto" else int(config["cv_repeats"]),
        }
    finally:
        for name, value in saved.items():
            setattr(_convex, name, value)
        _convex.fit_block.__kwdefaults__["penalties"] = saved_grid
