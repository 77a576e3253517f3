"""Calibrated probabilities and split-conformal prediction sets from out-of-fold predictions.

A fit keeps the out-of-fold probabilities of the arm it kept: predictions on labelled cells
by models that never saw them (the exact ``lbfgs`` fit: its cross-validation, for REFINE the
mixture at the chosen source share; the ``adam`` fit: its cross-fitted members, each on its
validation fold). They calibrate the final model the way a held-out set would, without
spending labels on it:

* **temperature scaling** (Guo et al. 2017): one scale of the log-probabilities, fitted by
  unweighted log-loss. Each block is already scaled out of fold, but with balanced class
  weights and before REFINE mixes the blocks; the mixture's scale is fitted here. The argmax,
  hence every predicted label, is unchanged.
* **split-conformal sets** (Vovk 2005; Angelopoulos & Bates 2021): the conformity scores of the
  calibrated out-of-fold probabilities give a threshold such that the set of classes
  passing it holds the true class of a new cell drawn like the labelled ones with probability
  at least ``1 - alpha``. ``"lac"`` scores ``1 - p(true class)`` (smallest sets); ``"aps"``
  scores the probability mass ranked at or above the true class (sets adapt to difficulty).

The final model (refitted on every labelled cell, or the average of the cross-fitted
members) fits slightly better than out of fold, so sets are, if anything, slightly
conservative; the ``adam`` members were early-stopped on the fold they predict, which leans
the other way a little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._constants import calibration_key, set_key, set_size_key, uncertainty_key
from .._errors import ScResidualError
from ._convex import PROBA_FLOOR, log_softmax, temperature

MIN_PER_CLASS = 2
"""Out-of-fold cells per class needed to calibrate (fewer: a note, no sets). Coverage is
marginal, over cells drawn like the labelled ones, so a rare class needs no more than to be
cross-validated at all; too few cells in all is :data:`MIN_CELLS`."""

MIN_CELLS = 50
"""Out-of-fold cells needed to calibrate (90% sets need 9; a temperature a few dozen)."""

MAX_SCORES = 100_000
"""Conformity scores kept in a saved model (a seeded subsample beyond; still valid)."""

METHODS = ("lac", "aps")


@dataclass
class Calibration:
    """Temperature and conformity scores fitted on out-of-fold probabilities."""

    temperature: float  # multiplies the log-probabilities (> 1 sharpens)
    scores: dict[str, np.ndarray]  # method -> sorted conformity scores of the OOF cells
    ece_before: float
    ece_after: float

    @classmethod
    def fit(cls, oof_proba: np.ndarray, y: np.ndarray, *, seed: int = 0) -> Calibration:
        """Calibrate on out-of-fold probabilities ``oof_proba`` of cells with codes ``y``."""
        log_p = np.log(np.maximum(oof_proba, PROBA_FLOOR))
        t = temperature(log_p, y, None)
        cal = np.exp(log_softmax(t * log_p))
        rows = np.random.default_rng(seed).permutation(len(y))[:MAX_SCORES]
        scores = {m: np.sort(conformity_scores(cal[rows], y[rows], m)) for m in METHODS}
        return cls(t, scores, expected_calibration_error(oof_proba, y),
                   expected_calibration_error(cal, y))

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (same argmax)."""
        return np.exp(log_softmax(self.temperature * np.log(np.maximum(proba, PROBA_FLOOR))))

    def threshold(self, alpha: float, method: str = "lac") -> float:
        """Conformal threshold: the ``ceil((n + 1)(1 - alpha))``-th smallest score."""
        check_alpha(alpha)
        scores = self.scores[check_method(method)]
        k = int(np.ceil((len(scores) + 1) * (1 - alpha)))
        if k > len(scores):
            raise ScResidualError(
                f"{len(scores)} out-of-fold cells cannot give {1 - alpha:.0%} prediction sets "
                f"(needs {int(np.ceil(1 / alpha)) - 1}); raise alpha or label more cells."
            )
        return float(scores[k - 1])

    def sets(self, proba: np.ndarray, alpha: float, method: str = "lac") -> np.ndarray:
        """Boolean ``(cells, classes)`` membership of the conformal sets (calibrated ``proba``)."""
        q = self.threshold(alpha, method)
        if method == "lac":
            return 1 - proba <= q
        order = np.argsort(-proba, axis=1)
        mass = np.cumsum(np.take_along_axis(proba, order, 1), axis=1)
        # A class enters when its score (the mass ranked at or above it) passes: the rule
        # the threshold was calibrated with, so coverage is exact (a very confident cell
        # whose top class alone exceeds the threshold gets an empty set, as with "lac").
        keep = mass <= q + 1e-12
        out = np.zeros_like(keep)
        np.put_along_axis(out, order, keep, 1)
        return out

    def to_dict(self) -> dict:
        """Plain JSON form (rounded scores)."""
        return {"temperature": self.temperature, "ece_before": self.ece_before,
                "ece_after": self.ece_after,
                "scores": {m: np.round(s, 6).tolist() for m, s in self.scores.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """Read :meth:`to_dict`'s form, refusing anything else (sizes bounded, values finite)."""
        scores = {m: np.asarray(d["scores"][m], dtype=np.float64) for m in METHODS}
        t = float(d["temperature"])
        ok = np.isfinite(t) and 0 < t < 1e3 and all(
            s.ndim == 1 and 0 < len(s) <= MAX_SCORES and np.isfinite(s).all()
            and (s >= 0).all() and (s <= 1 + 1e-6).all() for s in scores.values()
        )
        if not ok:
            raise ValueError("calibration values out of range")
        return cls(t, {m: np.sort(s) for m, s in scores.items()}, float(d["ece_before"]),
                   float(d["ece_after"]))


def check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ScResidualError(f"alpha={alpha} must lie in (0, 1); e.g. 0.1 for 90% sets.")
    return alpha


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ScResidualError(f"unknown conformal score {method!r}; use one of {METHODS}.")
    return method


def conformity_scores(proba: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """Non-conformity of the true classes ``y`` (higher: less plausible)."""
    p_true = proba[np.arange(len(y)), y]
    if method == "lac":
        return 1 - p_true
    # APS: mass of the classes ranked at or above the true one (ties count as above).
    return np.where(proba >= p_true[:, None], proba, 0).sum(1)


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: mean |accuracy - confidence| over equal-width confidence bins."""
    conf = proba.max(1)
    hit = proba.argmax(1) == y
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        in_b = bins == b
        total += in_b.sum() * abs(hit[in_b].mean() - conf[in_b].mean())
    return float(total / max(len(y), 1))


def calibration_problem(model) -> str | None:
    """Why the fitted :class:`ResidualModel` ``model`` has no calibration (None if it has)."""
    if model.calibration_ is not None:
        return None
    if model.calibration_note_:
        return model.calibration_note_
    if model.config.solver != "lbfgs":
        return ("the model was fitted without cross-fitting, so it has no out-of-fold "
                "predictions to calibrate on: refit it with folds=5 (CLI --folds 5) for "
                "calibrated probabilities and prediction sets.")
    return "the model was saved without calibration: refit it with this version."


def calibrate(model, y: np.ndarray) -> tuple[Calibration | None, str | None]:
    """Calibration of ``model`` on its out-of-fold predictions (true codes ``y``), or a note."""
    counts = np.bincount(y, minlength=len(model.classes_))
    if not len(y):
        return None, ("the model has no out-of-fold predictions (too few labels to "
                      "cross-validate): label more cells and refit for calibrated probabilities "
                      "and prediction sets.")
    if len(y) < MIN_CELLS:
        return None, (f"calibration needs {MIN_CELLS} out-of-fold cells but the model has "
                      f"{len(y)}: label more cells and refit.")
    low = int(np.argmin(counts))
    if counts[low] < MIN_PER_CLASS:
        return None, (f"calibration needs {MIN_PER_CLASS} out-of-fold cells per class but "
                      f"{model.classes_[low]!r} has {int(counts[low])}: label more cells of it "
                      "and refit.")
    return Calibration.fit(model.oof_proba_, y, seed=model.config.seed), None


def write_uncertainty(
    adata, key: str, proba: np.ndarray, classes: list[str], calibration: Calibration | None,
    *, sets: bool, alpha: float, method: str,
) -> None:
    """Write ``obs['<key>_uncertainty']`` and, with ``sets``, the conformal sets into ``adata``.

    ``proba`` are the (calibrated, where ``calibration`` exists) probabilities.
    """
    adata.obs[uncertainty_key(key)] = (1 - proba.max(1)).astype(np.float32)
    info = {"calibrated": calibration is not None, "uncertainty": "1 - max probability"}
    if calibration is not None:
        info.update(temperature=calibration.temperature, ece_before=calibration.ece_before,
                    ece_after=calibration.ece_after)
    if sets:
        member = calibration.sets(proba, alpha, method)
        order = np.argsort(-proba, axis=1)
        names = np.asarray(classes, dtype=object)
        adata.obs[set_key(key)] = pd.Categorical(
            ["|".join(names[o[m[o]]]) for o, m in zip(order, member, strict=True)]
        )
        adata.obs[set_size_key(key)] = member.sum(1).astype(np.int64)
        info.update(alpha=alpha, coverage=1 - alpha, score=method,
                    threshold=calibration.threshold(alpha, method),
                    n_calibration=len(calibration.scores[method]))
    adata.uns[calibration_key(key)] = info
