"""Convex fits of REFINE's linear blocks: L2-penalised logistic regression, penalty by CV.

When the residual encoder is linear (:class:`scresidual.module.LinearEncoder`), every arm is a
multinomial logistic regression on standardised features, and a few hundred labels are better
served by sklearn's exact solver with a cross-validated penalty than by stochastic training
with early stopping (which fixes the penalty and stops on a noisy validation curve).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

PENALTIES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
"""Inverse L2 penalties ``C`` tried for each block (features standardised)."""

PROBA_FLOOR = 1e-6
"""Probabilities are floored here in losses: a class missing from a fold's training part
would otherwise give an infinite loss to every arm alike."""


@dataclass
class BlockFit:
    """A block's cross-validated logistic regression."""

    C: float
    scale: float  # temperature scaling of the logits, calibrated out of fold
    coef: np.ndarray  # (n_classes, n_features), refitted on every labelled cell
    intercept: np.ndarray  # (n_classes,)
    oof_log_proba: np.ndarray  # (n_labelled, n_classes), out of fold
    cv_loss: dict[float, float]


def weighted_losses(log_proba: np.ndarray, y: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Per-cell cross-entropy, class-weighted and scaled to mean weight 1 (comparable arms)."""
    nll = -np.maximum(log_proba[np.arange(len(y)), y], np.log(PROBA_FLOOR))
    if weights is None:
        return nll
    w = weights[y]
    return nll * w / w.mean()


def _full_log_proba(model: LogisticRegression, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Log-probabilities over all classes (a class absent from the training part gets ~0)."""
    out = np.full((len(X), n_classes), np.log(PROBA_FLOOR))
    out[:, model.classes_] = np.log(np.maximum(model.predict_proba(X), PROBA_FLOOR))
    return out


def _model(
    C: float, weights: np.ndarray | None, seed: int, tol: float = 1e-3
) -> LogisticRegression:
    cw = None if weights is None else dict(enumerate(weights.tolist()))
    # newton-cg: a handful of Newton steps on these small problems (5x faster than lbfgs
    # here); warm_start: along the increasing C path each fit starts from the previous one.
    # The fold fits only rank penalties and give out-of-fold predictions: at tol 1e-3 they
    # take half the time on a few thousand labels. The final fit keeps sklearn's 1e-4 (a
    # loose final fit cost DLPFC's annotated half 0.025 macro-F1).
    return LogisticRegression(
        C=C,
        class_weight=cw,
        solver="newton-cg",
        max_iter=200,
        tol=tol,
        warm_start=True,
        random_state=seed,
    )


def fit_block(
    X: np.ndarray,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    *,
    n_classes: int,
    weights: np.ndarray | None,
    penalties=PENALTIES,
    seed: int = 0,
) -> BlockFit:
    """Choose ``C`` on ``folds`` (least calibrated loss), refit on all, calibrate the scale.

    ``X`` and ``y`` are the labelled rows; ``folds`` index into them (see
    :func:`scorable_rows` for which validation rows are scored). The refitted weights
    are multiplied by the temperature that calibrates the out-of-fold logits, so blocks
    fitted with different penalties speak on the same scale when REFINE mixes them. Without
    folds the penalty is ``C = 1``, unscaled, and there are no out-of-fold predictions.

    The scale (and the out-of-fold predictions kept for calibration) come from the folds
    refitted at ``C * n / n_train``: sklearn's ``C`` weighs the *sum* of the losses, so the
    final model, fitted on every labelled cell with the chosen ``C``, is less regularised
    per cell than the fold models that chose it, hence sharper. Calibrating on the fold
    models at the penalty chosen would sharpen it twice (measured at 10% labels: the
    out-of-fold temperature was ~1.05-1.15 where the held-out cells wanted ~0.9-1.0 on
    BaristaSeq and DLPFC); at the matched per-cell penalty the fold models predict like the
    final one.
    """
    penalties = sorted(penalties)
    oof = {C: np.zeros((len(y), n_classes)) for C in penalties}
    seen = np.zeros(len(y))  # folds of repeated cross-validation validate a row repeatedly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a loose fit still ranks C fine
        for train, val in folds:
            model = _model(penalties[0], weights, seed)
            for C in penalties:
                model.set_params(C=C).fit(X[train], y[train])
                oof[C][val] += _full_log_proba(model, X[val], n_classes)
            seen[val] += 1
        for C in penalties:  # mean log-probabilities over the repeats
            oof[C] /= np.maximum(seen, 1)[:, None]
        best, cv_loss, scale = 1.0, {}, 1.0
        oof_final = np.zeros((len(y), n_classes))
        if folds:
            rows = scorable_rows(y, folds)
            best, cv_loss = _least_loss_penalty(
                {C: p[rows] for C, p in oof.items()}, y[rows], weights
            )
            matched = best * len(y) / np.mean([len(tr) for tr, _ in folds])
            for train, val in folds:  # the fold models at the final model's per-cell penalty
                model = _model(matched, weights, seed).fit(X[train], y[train])
                oof_final[val] += _full_log_proba(model, X[val], n_classes)
            oof_final /= np.maximum(seen, 1)[:, None]
            scale = temperature(oof_final[rows], y[rows], weights)
        final = _model(best, weights, seed, tol=1e-4).fit(X, y)
    coef = np.zeros((n_classes, X.shape[1]))
    intercept = np.full(n_classes, np.log(PROBA_FLOOR))  # an unseen class is never predicted
    coef[final.classes_] = (
        final.coef_
        if len(final.classes_) > 2
        else np.vstack([-final.coef_[0] / 2, final.coef_[0] / 2])
    )
    intercept[final.classes_] = (
        final.intercept_
        if len(final.classes_) > 2
        else np.array([-final.intercept_[0] / 2, final.intercept_[0] / 2])
    )
    oof_best = log_softmax(scale * oof_final) if folds else np.zeros((len(y), n_classes))
    return BlockFit(best, scale, coef * scale, intercept * scale, oof_best, cv_loss)


def scorable_rows(y: np.ndarray, folds) -> np.ndarray:
    """Validation rows whose class occurs in each of their folds' training parts.

    A class with a label or two can be missing from a fold's training rows; no model can
    predict its validation cells there, and their (floored) losses, class-weighted, would
    swamp every comparison. They are left out of model selection.
    """
    keep = np.ones(len(y), dtype=bool)
    for train, val in folds:
        keep[val] &= np.isin(y[val], y[train])
    return keep


def _least_loss_penalty(oof: dict, y, weights) -> tuple[float, dict[float, float]]:
    """The penalty whose temperature-calibrated out-of-fold loss is least.

    Losses are those of calibrated probabilities, so a strongly regularised, under-confident
    fit is not penalised for its scale alone. The one-standard-error rule (the strongest
    penalty within one SE of the best) was measured against this on the four benchmark slides
    and lost on average: under balanced class weights it over-regularises the rare classes
    (lymph node, 10% labels: macro-F1 .51 against .59), more than it gains on STARmap.
    """
    cv_loss = {
        C: float(weighted_losses(log_softmax(temperature(lp, y, weights) * lp), y, weights).mean())
        for C, lp in oof.items()
    }
    return min(cv_loss, key=cv_loss.get), cv_loss


def temperature(log_proba: np.ndarray, y, weights) -> float:
    """Scale of the logits that minimises the weighted log-loss (temperature scaling)."""
    from scipy.optimize import minimize_scalar

    def loss(log_scale):
        return float(weighted_losses(log_softmax(np.exp(log_scale) * log_proba), y, weights).mean())

    return float(np.exp(minimize_scalar(loss, bounds=(-4, 4), method="bounded").x))


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax."""
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def mixed_log_proba(probe: np.ndarray, scratch: np.ndarray, share: float) -> np.ndarray:
    """Log-softmax of ``share * probe + (1 - share) * scratch`` (log-probabilities in)."""
    return log_softmax(share * probe + (1 - share) * scratch)
