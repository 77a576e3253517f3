"""Model selection shared by both engines: folds, the source share, the guard, one loss.

Whichever engine fits the arms (:mod:`._exact` or :mod:`._gradient`), the validation cells are
drawn here (:func:`splits`), REFINE's source share is chosen here by one rule
(:func:`choose_share`: the share whose mixture of the two branches' *calibrated*
log-probabilities has the least weighted log-loss on validation cells), and the guard decides
here whether a fallback replaces the arm (:func:`guard`), on per-cell losses from one
function (:func:`weighted_losses`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold, train_test_split

from .._errors import ScResidualError

logger = logging.getLogger(__name__)

AUTO_GROUP = 0.95
"""``group_folds="auto"`` holds out slides when at least this share of the cells is labelled."""

AUTO_FOLDS, AUTO_FOLDS_BELOW = 5, 1000
"""``folds=None`` cross-validates with 5 folds below 1,000 labelled cells (one 20% split would
validate on fewer than 200 cells: too few to early-stop or to guard reliably)."""

SOURCE_SHARES = {"adam": (0.0, 0.25, 0.5, 0.75, 1.0), "newton-cg": tuple(i / 10 for i in range(11))}
"""Default ``source_shares`` per solver: each ``adam`` candidate starts a network that is then
trained jointly (a coarse grid: the training moves it anyway), each ``newton-cg`` one is a
mixture of out-of-fold predictions already computed (a finer grid costs nothing, and on
BaristaSeq's annotated half the best share, 0.4, fell between the coarse grid's 0.25 and 0.5:
macro-F1 .644 against .656 at 0.4)."""

PROBA_FLOOR = 1e-6
"""Probabilities are floored here in losses: a class missing from a fold's training part
would otherwise give an infinite loss to every arm alike."""


# ---------------------------------------------------------------------------- losses
def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax."""
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def weighted_losses(log_proba: np.ndarray, y: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Per-cell cross-entropy, class-weighted and scaled to mean weight 1 (comparable arms)."""
    nll = -np.maximum(log_proba[np.arange(len(y)), y], np.log(PROBA_FLOOR))
    if weights is None:
        return nll
    w = weights[y]
    return nll * w / w.mean()


def temperature(log_proba: np.ndarray, y, weights) -> float:
    """Scale of the logits that minimises the weighted log-loss (temperature scaling)."""
    from scipy.optimize import minimize_scalar

    def loss(log_scale):
        return float(weighted_losses(log_softmax(np.exp(log_scale) * log_proba), y, weights).mean())

    return float(np.exp(minimize_scalar(loss, bounds=(-4, 4), method="bounded").x))


def mixed_log_proba(probe: np.ndarray, scratch: np.ndarray, share: float) -> np.ndarray:
    """Log-softmax of ``share * probe + (1 - share) * scratch`` (log-probabilities in)."""
    return log_softmax(share * probe + (1 - share) * scratch)


# ---------------------------------------------------------------------------- folds
def n_folds(folds: int | None, validation_size: float, n_labelled: int) -> int:
    """Folds used for ``n_labelled`` labelled cells (1: one ``validation_size`` split)."""
    if folds is None:  # auto: cross-validate while one split would validate on < 200 cells
        folds = AUTO_FOLDS if n_labelled < AUTO_FOLDS_BELOW and validation_size else 1
    return int(folds) if n_labelled >= 2 * int(folds) else 1


def fold_groups(mode, groups, labelled: np.ndarray, n: int) -> np.ndarray | None:
    """Group codes of every row if folds should hold out groups (``group_folds=mode``)."""
    if mode not in ("auto", True, False):
        raise ScResidualError(f"group_folds={mode!r}; use 'auto', True or False.")
    if groups is None or not mode or (mode == "auto" and len(labelled) < AUTO_GROUP * n):
        return None
    groups = pd.Series(np.asarray(groups, dtype=object))
    if len(groups) != n:
        raise ScResidualError(
            f"groups has {len(groups)} values for {n} rows; pass one group per row."
        )
    codes = pd.factorize(groups.astype(str))[0]
    return codes if len(np.unique(codes[labelled])) >= 2 else None


def splits(
    labelled: np.ndarray,
    codes: np.ndarray,
    *,
    k: int,
    validation_size: float,
    seed: int,
    repeat: int = 0,
    groups: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, validation)`` row pairs: ``k`` folds, one split (``k = 1``), or no validation.

    ``codes`` are the classes of the ``labelled`` rows; ``groups`` (codes of every row) make
    the folds hold out whole groups; ``repeat`` draws another shuffle.
    """
    seed = seed + 7919 * repeat
    k = min(k, len(labelled) // 2)
    counts = np.bincount(codes)
    if k > 1 and groups is not None:
        g = groups[labelled]
        k = min(k, len(np.unique(g)))
        return [(labelled[tr], labelled[va]) for tr, va in GroupKFold(k).split(labelled, codes, g)]
    if k > 1:
        # Stratify when every class can appear in each fold's training part (and
        # sklearn can: some class must have at least k cells).
        if counts[counts > 0].min() >= 2 and counts.max() >= k:
            with warnings.catch_warnings():  # classes rarer than k: sklearn warns
                warnings.simplefilter("ignore", UserWarning)
                parts = list(
                    StratifiedKFold(k, shuffle=True, random_state=seed).split(labelled, codes)
                )
        else:
            parts = list(KFold(k, shuffle=True, random_state=seed).split(labelled))
        return [(labelled[tr], labelled[va]) for tr, va in parts]
    if not validation_size or len(labelled) < 10:
        return [(labelled, np.array([], dtype=np.int64))]
    stratify = codes if counts[counts > 0].min() >= 2 else None
    try:
        train, val = train_test_split(
            labelled, test_size=validation_size, stratify=stratify, random_state=seed
        )
    except ValueError:  # too few cells per class for a stratified split
        train, val = train_test_split(labelled, test_size=validation_size, random_state=seed)
    return [(np.sort(train), np.sort(val))]


# ---------------------------------------------------------------------------- REFINE's share
def choose_share(
    probe: np.ndarray, scratch: np.ndarray, y: np.ndarray, weights, shares
) -> tuple[float, dict[float, float]]:
    """The source share of least validation loss, and the loss of each share tried.

    ``probe`` and ``scratch`` are the two branches' calibrated log-probabilities of the
    validation cells ``y``: each branch is temperature-scaled first (the exact engine out of
    fold, in :func:`._convex.fit_block`; the gradient engine on the validation fold), so a
    share weighs evidence, not the sharpness a penalty or an early stop happened to leave.
    Ties keep the first share listed.
    """
    scores = {
        float(s): float(weighted_losses(mixed_log_proba(probe, scratch, s), y, weights).mean())
        for s in shares
    }
    return min(scores, key=scores.get), scores


# ---------------------------------------------------------------------------- the guard
def paired_guard(arm: str, fallbacks: list[str], losses: dict, guard_z: float, report: dict) -> str:
    """Keep ``arm`` unless a fallback is better beyond validation noise.

    Per-cell validation losses are compared in pairs: a fallback (scratch, or the linear
    probe) qualifies only if ``mean(d) > guard_z * se(d)`` with ``d = loss(arm) -
    loss(fallback)``, i.e. when the residual branch or the source measurably hurts; of the
    qualifying fallbacks the one with the lowest loss is kept. A plain "lowest mean loss
    wins" rule would flip on noise with the few dozen validation cells of a sparsely
    labelled slide. Each fallback's paired difference and standard error go to ``report``.
    """
    if losses.get(arm) is None:
        return arm
    qualified = {}
    for other in fallbacks:
        d = losses[arm] - losses[other]
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        report[other]["paired_loss_difference"] = float(d.mean())
        report[other]["paired_standard_error"] = se
        if d.mean() > guard_z * se:
            qualified[other] = float(losses[other].mean())
    return min(qualified, key=qualified.get) if qualified else arm


def guard(
    arm: str, stages: list[str], reports: dict, val: dict | None, y_val, *, on: bool, guard_z: float
) -> tuple[str, dict]:
    """The arm kept and the guard report: ``arm``, or the fallback the guard prefers.

    ``val``: ``{stage: (per-cell validation losses, predicted codes)}``, or None without
    validation cells; ``reports`` (per stage) gets each stage's validation loss and macro-F1.
    With the guard off only ``arm``'s report is kept (its starting points were fitted anyway).
    """
    losses = {}
    for stage in stages:
        losses[stage] = None if val is None else val[stage][0]
        if val is None:
            reports[stage]["val_loss"] = float("nan")
            continue
        reports[stage]["val_loss"] = float(val[stage][0].mean())
        reports[stage]["val_macro_f1"] = float(
            f1_score(y_val, val[stage][1], average="macro", zero_division=0)
        )
    fallbacks = [a for a in stages if a != arm] if on else []
    if not on:
        reports = {arm: reports[arm]}
    chosen = paired_guard(arm, fallbacks, losses, guard_z, reports)
    if fallbacks:
        logger.info(
            "guard: kept %r (validation loss %s)",
            chosen,
            ", ".join(f"{a}={r['val_loss']:.4f}" for a, r in reports.items()),
        )
    return chosen, reports


# ---------------------------------------------------------------------------- engines' result
@dataclass
class EngineFit:
    """What an engine hands back to :class:`ResidualModel` after fitting.

    ``predictor``: the fitted network (gradient engine) or :class:`._exact.ExactHead`;
    ``oof_rows``/``oof_proba``: labelled rows predicted out of fold by the kept arm and those
    probabilities (empty, with ``note`` saying why, when there are none).
    """

    predictor: object
    chosen_arm: str
    guard_report: dict
    oof_rows: np.ndarray
    oof_proba: np.ndarray | None
    note: str | None = None
