"""Calibrated probabilities and split-conformal prediction sets from out-of-fold predictions.

A fit keeps the out-of-fold probabilities of the arm it kept: predictions on labelled cells
by models that never saw them (the exact engine: its cross-validation, for REFINE the
mixture at the chosen source share; the gradient engine: its cross-fitted members, each on its
validation fold). They calibrate the final model the way a held-out set would, without
spending labels on it:

* **temperature scaling** (Guo et al. 2017): one scale of the log-probabilities, fitted by
  unweighted log-loss. For the exact linear fit this is the second of two scalings: each
  logistic-regression block is scaled out of fold first (with balanced class weights, before
  REFINE mixes the blocks; see :func:`scresidual.model._convex.fit_block`, whose fold
  models are refitted at the final model's per-cell penalty so that they predict as sharply
  as it does). The raw logistic-regression probabilities, with no temperature at all (of a
  block averaged over penalties, its penalties' logits averaged to a net scale of 1), are the
  *uncalibrated* baseline (``SpatialRegionClassifier.predict_proba(calibrated=False)``; ECE
  0.09-0.45 on the benchmark slides at 10% labels, against 0.01-0.04 calibrated). The
  mixture's temperature is kept only where it is supported: its likelihood-ratio statistic
  against ``T = 1`` on the out-of-fold cells must pass the chi-square(1) 95% point
  (:data:`TEMPERATURE_TEST`). A scale fitted on a few hundred cells otherwise chases noise:
  on STARmap, BaristaSeq and DLPFC at 10% labels the unsupported ones (statistic 0.5-1.9)
  raised the held-out ECE of the already scaled blocks (0.021 to 0.027 on BaristaSeq, 0.017
  to 0.018 on DLPFC), while on the lymph node, whose blocks are under-confident, it is
  strongly supported (held-out ECE 0.07-0.20 down to 0.02-0.04). The argmax, hence every
  predicted label, is unchanged.
* **split-conformal sets** (Vovk 2005; Angelopoulos & Bates 2021): the conformity scores of the
  calibrated out-of-fold probabilities give a threshold such that the set of classes
  passing it holds the true class of a new cell drawn like the labelled ones with probability
  at least ``1 - alpha``. ``"lac"`` scores ``1 - p(true class)`` (smallest sets); ``"aps"``
  scores the probability mass ranked at or above the true class (sets adapt to difficulty).

The final model (refitted on every labelled cell, or the average of the cross-fitted
members) fits slightly better than out of fold, so sets are, if anything, slightly
conservative; the gradient engine's members were early-stopped on the fold they predict, which leans
the other way a little.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._constants import calibration_key, set_key, set_size_key, uncertainty_key
from .._errors import ScResidualError
from ..metrics import expected_calibration_error
from ._selection import PROBA_FLOOR, log_softmax, temperature

logger = logging.getLogger(__name__)

MIN_PER_CLASS = 2
"""Out-of-fold cells a class needs for the sets to account for it. Coverage is marginal, over
cells drawn like the labelled ones, so the calibration still holds with a class below this
(a region labelled once is never cross-validated: no fold model saw it), but that class's
cells are not represented among the conformity scores: a one-line warning names such
classes and says their coverage is not guaranteed. Too few cells in all
(:data:`MIN_CELLS`) refuses calibration."""

TEMPERATURE_TEST = 3.841
"""Chi-square(1) 95% point: the likelihood-ratio statistic of the fitted temperature against
``T = 1`` on the out-of-fold cells must exceed it for the temperature to be applied."""

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
    fitted_temperature: float = 1.0  # before the likelihood-ratio test (1: not supported)
    thin_classes: tuple[str, ...] = ()  # classes with too few OOF cells (no guarantee)

    @classmethod
    def fit(
        cls, oof_proba: np.ndarray, y: np.ndarray, *, seed: int = 0, test: bool = True
    ) -> Calibration:
        """Calibrate on out-of-fold probabilities ``oof_proba`` of cells with codes ``y``.

        ``test``: keep the fitted temperature only where its likelihood-ratio statistic
        against ``T = 1`` exceeds :data:`TEMPERATURE_TEST` (else ``T = 1``).
        """
        log_p = np.log(np.maximum(oof_proba, PROBA_FLOOR))
        fitted = temperature(log_p, y, None)
        t = fitted
        if test:

            def nll(scale):
                return -float(log_softmax(scale * log_p)[np.arange(len(y)), y].sum())

            t = fitted if 2 * (nll(1.0) - nll(fitted)) > TEMPERATURE_TEST else 1.0
        cal = np.exp(log_softmax(t * log_p))
        rows = np.random.default_rng(seed).permutation(len(y))[:MAX_SCORES]
        scores = {m: np.sort(conformity_scores(cal[rows], y[rows], m)) for m in METHODS}
        return cls(
            t,
            scores,
            expected_calibration_error(oof_proba, y),
            expected_calibration_error(cal, y),
            fitted,
        )

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
        return {
            "temperature": self.temperature,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "fitted_temperature": self.fitted_temperature,
            "thin_classes": list(self.thin_classes),
            "scores": {m: np.round(s, 6).tolist() for m, s in self.scores.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """Read :meth:`to_dict`'s form, refusing anything else (sizes bounded, values finite)."""
        scores = {m: np.asarray(d["scores"][m], dtype=np.float64) for m in METHODS}
        t = float(d["temperature"])
        ok = (
            np.isfinite(t)
            and 0 < t < 1e3
            and all(
                s.ndim == 1
                and 0 < len(s) <= MAX_SCORES
                and np.isfinite(s).all()
                and (s >= 0).all()
                and (s <= 1 + 1e-6).all()
                for s in scores.values()
            )
        )
        if not ok:
            raise ValueError("calibration values out of range")
        thin = tuple(str(c)[:200] for c in list(d.get("thin_classes") or [])[:10_000])
        return cls(
            t,
            {m: np.sort(s) for m, s in scores.items()},
            float(d["ece_before"]),
            float(d["ece_after"]),
            float(d.get("fitted_temperature", t)),
            thin,
        )


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


def calibration_problem(model) -> str | None:
    """Why the fitted :class:`ResidualModel` ``model`` has no calibration (None if it has)."""
    if model.calibration_ is not None:
        return None
    if model.calibration_note_:
        return model.calibration_note_
    if model.config.solver != "newton-cg":
        return (
            "the model was fitted without cross-fitting, so it has no out-of-fold "
            "predictions to calibrate on: refit it with folds=5 (CLI --folds 5) for "
            "calibrated probabilities and prediction sets."
        )
    return "the model was saved without calibration: refit it with this version."


def calibrate(model, y: np.ndarray) -> tuple[Calibration | None, str | None]:
    """Calibration of ``model`` on its out-of-fold predictions (true codes ``y``), or a note."""
    counts = np.bincount(y, minlength=len(model.classes_))
    if not len(y):
        return None, (
            "the model has no out-of-fold predictions (too few labels to "
            "cross-validate): label more cells and refit for calibrated probabilities "
            "and prediction sets."
        )
    if len(y) < MIN_CELLS:
        return None, (
            f"calibration needs {MIN_CELLS} out-of-fold cells but the model has "
            f"{len(y)}: label more cells and refit."
        )
    cal = Calibration.fit(model.oof_proba_, y, seed=model.config.seed)
    cal.thin_classes = tuple(
        str(c) for c, n in zip(model.classes_, counts, strict=True) if n < MIN_PER_CLASS
    )
    if cal.thin_classes:
        logger.warning("%s", thin_note(cal.thin_classes))
    return cal, None


def thin_note(classes) -> str:
    """One line: these classes have too few out-of-fold cells for their coverage to hold."""
    names = ", ".join(repr(c) for c in list(classes)[:10]) + (" …" if len(classes) > 10 else "")
    return (
        f"calibrated without {names}: fewer than {MIN_PER_CLASS} out-of-fold cells each, "
        "so the prediction sets' coverage is not guaranteed for them; label more cells "
        "of them and refit."
    )


def write_uncertainty(
    adata,
    key: str,
    proba: np.ndarray,
    classes: list[str],
    calibration: Calibration | None,
    *,
    sets: bool,
    alpha: float,
    method: str,
) -> None:
    """Write ``obs['<key>_uncertainty']`` and, with ``sets``, the conformal sets into ``adata``.

    ``proba`` are the (calibrated, where ``calibration`` exists) probabilities.
    """
    adata.obs[uncertainty_key(key)] = (1 - proba.max(1)).astype(np.float32)
    info = {"calibrated": calibration is not None, "uncertainty": "1 - max probability"}
    if calibration is not None:
        info.update(
            temperature=calibration.temperature,
            ece_before=calibration.ece_before,
            ece_after=calibration.ece_after,
            fitted_temperature=calibration.fitted_temperature,
        )
        if calibration.thin_classes:
            info["classes_without_guarantee"] = list(calibration.thin_classes)
    if sets:
        member = calibration.sets(proba, alpha, method)
        order = np.argsort(-proba, axis=1)
        names = np.asarray(classes, dtype=object)
        adata.obs[set_key(key)] = pd.Categorical(
            ["|".join(names[o[m[o]]]) for o, m in zip(order, member, strict=True)]
        )
        adata.obs[set_size_key(key)] = member.sum(1).astype(np.int64)
        info.update(
            alpha=alpha,
            coverage=1 - alpha,
            score=method,
            threshold=calibration.threshold(alpha, method),
            n_calibration=len(calibration.scores[method]),
        )
    adata.uns[calibration_key(key)] = info
