"""Convex fits of REFINE's linear blocks: L2-penalised logistic regressions, averaged by CV.

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

from .._process import worker_map
from ._selection import PROBA_FLOOR, log_softmax, temperature, weighted_losses

PENALTIES = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
"""Inverse L2 penalties ``C`` tried for each block (features standardised). The grid reaches
down to 1e-4: with ~100 labels the evidence can peak beyond a grid that stops at 0.001
(STARmap at 10% labels, seed 1: the residual block's evidence was bimodal, 0.73 of it on
``C = 10`` and 0.006 on 0.001; with 3e-4 and 1e-4 tried, 3e-4 took 0.59 of it)."""

EVIDENCE_FLOOR = 1e-3
"""Penalties whose share of the out-of-fold evidence is below this are left out of a block's
average (and not refitted): their weight could not move a prediction."""


@dataclass
class BlockFit:
    """A block's cross-validated logistic regression, averaged over penalties."""

    C: float  # the penalty with the most weight
    scale: float  # net temperature of the logits (raw = coef / scale), fitted out of fold
    coef: np.ndarray  # (n_classes, n_features), refitted on every labelled cell
    intercept: np.ndarray  # (n_classes,)
    oof_log_proba: np.ndarray  # (n_labelled, n_classes), out of fold
    cv_loss: dict[float, float]
    penalty_weights: dict[float, float]  # each penalty's weight in the average


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
    n_jobs: int = 1,
) -> BlockFit:
    """Fit every penalty on ``folds``, average them by out-of-fold evidence, refit on all.

    ``X`` and ``y`` are the labelled rows; ``folds`` index into them (see
    :func:`scorable_rows` for which validation rows are scored). Each penalty ``C`` gets the
    weight ``softmax(-n * loss)`` of its temperature-calibrated out-of-fold loss (mean over
    the ``n`` scored cells; :func:`penalty_weights`), and the block is the weighted average
    of the temperature-scaled logistic regressions, each refitted on every labelled cell: a
    linear model again, whose logits are scaled once more by the temperature that
    calibrates the averaged out-of-fold logits, so that blocks speak on the same scale when
    REFINE mixes them. Without folds the penalty is ``C = 1``, unscaled, and there are no
    out-of-fold predictions.

    Why an average: on ~100 labels the least-loss penalty flips between neighbours of the
    grid on noise (STARmap at 10% labels: C = 0.003 to 0.1 across seeds at out-of-fold losses
    within a few hundredths); weighting each by its evidence keeps a near-tie's neighbours in
    the fit, and a penalty clearly worse out of fold gets no weight (there, 3 seeds: REFINE
    macro-F1 .872 with the least-loss penalty, .880 averaged; no slide lost more than .002).

    The fold models weigh each class as the final fit does (:func:`fold_weights`), and the
    scales (and the out-of-fold predictions kept for calibration) come from the folds
    refitted at ``C * n / n_train``: sklearn's ``C`` weighs the *sum* of the losses, so the
    final model, fitted on every labelled cell with the same ``C``, is less regularised per
    cell than the fold models that chose it, hence sharper. Calibrating on the fold models
    at ``C`` itself would sharpen it twice (measured at 10% labels: the out-of-fold
    temperature was ~1.05-1.15 where the held-out cells wanted ~0.9-1.0 on BaristaSeq and
    DLPFC); at the matched per-cell penalty the fold models predict like the final one.
    """
    penalties = sorted(penalties)
    if not folds:
        return _single_fit(X, y, 1.0, n_classes, weights, seed)
    n_train = np.mean([len(tr) for tr, _ in folds])
    fold_w = [fold_weights(weights, y, tr) for tr, _ in folds]
    rows = scorable_rows(y, folds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a loose fit still ranks C fine
        oof = _oof_path(X, y, folds, fold_w, penalties, n_classes, seed, n_jobs)
        cv_loss = calibrated_losses({C: p[rows] for C, p in oof.items()}, y[rows], weights)
        pi = penalty_weights(cv_loss, int(rows.sum()))
        if rows.any() and len(np.setdiff1d(y, y[rows])):  # a class no fold validates
            pi = strongest_kept(pi)
        # the fold models at each kept penalty's final per-cell penalty (see above)
        kept = [C for C in penalties if pi[C] > 0]
        matched = _oof_path(
            X, y, folds, fold_w, [C * len(y) / n_train for C in kept], n_classes, seed, n_jobs
        )
        z_oof, coef, intercept, mean_t = 0.0, 0.0, 0.0, 0.0
        for C, lp in zip(kept, matched.values(), strict=True):
            t = pi[C] * temperature(lp[rows], y[rows], weights)  # each penalty scaled first
            fit = _single_fit(X, y, C, n_classes, weights, seed)
            z_oof, mean_t = z_oof + t * lp, mean_t + t
            coef, intercept = coef + t * fit.coef, intercept + t * fit.intercept
        scale = temperature(z_oof[rows], y[rows], weights)
    unseen = ~np.isin(np.arange(n_classes), y)  # a class never labelled is never predicted
    intercept = np.where(unseen, np.log(PROBA_FLOOR), scale * intercept)
    # ``scale`` reported is the whole temperature: the raw logits (``predict_proba(raw=True)``)
    # are then a weighted mean of the penalties' own logistic regressions.
    return BlockFit(
        max(pi, key=pi.get),
        float(scale * mean_t),
        scale * coef,
        intercept,
        log_softmax(scale * z_oof),
        cv_loss,
        pi,
    )


def _single_fit(X, y, C, n_classes, weights, seed) -> BlockFit:
    """One logistic regression on every labelled cell, unscaled, no out-of-fold part."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        final = _model(C, weights, seed, tol=1e-4).fit(X, y)
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
    return BlockFit(C, 1.0, coef, intercept, np.zeros((len(y), n_classes)), {}, {C: 1.0})


def _oof_path(X, y, folds, fold_w, penalties, n_classes, seed, n_jobs) -> dict:
    """Out-of-fold log-probabilities at each penalty, averaged over repeated folds.

    Each fold's path (its fits along the increasing penalties, each starting from the
    previous one) is independent of the others: ``n_jobs`` worker processes run them.
    """
    paths = worker_map(
        _fold_path,
        [
            (X, y, train, val, w, penalties, n_classes, seed)
            for (train, val), w in zip(folds, fold_w, strict=True)
        ],
        n_jobs,
    )
    oof = {C: np.zeros((len(y), n_classes)) for C in penalties}
    seen = np.zeros(len(y))  # folds of repeated cross-validation validate a row repeatedly
    for (_, val), path in zip(folds, paths, strict=True):
        for C, lp in zip(penalties, path, strict=True):
            oof[C][val] += lp
        seen[val] += 1
    return {C: p / np.maximum(seen, 1)[:, None] for C, p in oof.items()}


def _fold_path(X, y, train, val, w, penalties, n_classes, seed) -> list[np.ndarray]:
    """One fold's validation log-probabilities at each penalty, warm-started along them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a loose fit still ranks C fine
        model = _model(penalties[0], w, seed)
        out = []
        for C in penalties:
            model.set_params(C=C).fit(X[train], y[train])
            out.append(_full_log_proba(model, X[val], n_classes))
    return out


def fold_weights(weights: np.ndarray | None, y: np.ndarray, train: np.ndarray):
    """Class weights for a fold's training part: each class keeps its share of the weight.

    The final fit weighs the classes with ``weights`` on every labelled cell; a fold's
    training part holds a different mix (a class with a few labels may have all of them
    there, or one fewer), and with the full-data weights its total weight would change with
    it. Under strong penalties, where the features' logits are small, the intercepts then
    follow those fold-to-fold totals, and the fold models mispredict where the final model
    would not (STARmap at 10% labels: out-of-fold accuracy 0.39 at ``C = 0.001`` where the
    final model scores macro-F1 0.88 on the hidden cells; REFINE .858 -> .872 with the
    weights rescaled, mean of 3 seeds). Rescaled per class, each fold
    model weighs the classes as the final fit does (sklearn's ``"balanced"`` recomputed per
    fold is the special case).
    """
    if weights is None:
        return None
    n_classes = len(weights)
    full = np.bincount(y, minlength=n_classes)
    part = np.bincount(y[train], minlength=n_classes)
    return np.where(part > 0, weights * full / np.maximum(part, 1) * len(train) / len(y), weights)


def penalty_weights(cv_loss: dict[float, float], n: int) -> dict[float, float]:
    """Each penalty's weight ``softmax(-n * loss)``, those below :data:`EVIDENCE_FLOOR` dropped.

    ``n * loss`` is minus the out-of-fold log-likelihood of the ``n`` scored cells (class-
    weighted to mean weight 1), so the weights are pseudo-Bayesian model averaging's
    (Yao et al. 2018): a penalty a few log-likelihood units behind the best keeps a say.
    """
    C = list(cv_loss)
    z = -n * np.array([cv_loss[c] for c in C])
    w = np.exp(z - z.max())
    w = np.where(w / w.sum() < EVIDENCE_FLOOR, 0.0, w)
    return {c: float(v) for c, v in zip(C, w / w.sum(), strict=True)}


def strongest_kept(pi: dict[float, float]) -> dict[float, float]:
    """All the weight on the strongest penalty (least ``C``) that kept some weight in ``pi``.

    Used when a labelled class has no scorable row (:func:`scorable_rows`: one label, or all
    its labels in one group): the out-of-fold evidence then says nothing about that class,
    and the penalty matters most to it. A single label fitted under a weak penalty gets a
    region the size of its own neighbourhood in feature space; the strong end of the path
    tends to the classes' weighted mean directions, which a single label estimates as well as
    any. So among the penalties the validated classes have not ruled out (weight at least
    :data:`EVIDENCE_FLOOR`), the strongest is taken. STARmap at 10% labels, seeds 1 and 2 (a
    39-spot region with one label): the probe's evidence put 0.56 and 0.50 of its weight on
    ``C = 0.03``, where that region's F1 is .65 and .58; the strongest kept penalty,
    ``C = 0.01``, gives .78 and .79. REFINE's macro-F1 there (with :data:`PENALTIES` down to
    1e-4): .879 -> .899 and .854 -> .880 (.895 and .879 with the rule alone); seed 0, every
    class validated, unchanged. No other benchmark case has such a class.
    """
    strongest = min(C for C, v in pi.items() if v > 0)
    return {C: float(C == strongest) for C in pi}


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


def calibrated_losses(oof: dict, y, weights) -> dict[float, float]:
    """Each penalty's temperature-calibrated out-of-fold loss (mean per scored cell).

    Losses are those of calibrated probabilities, so a strongly regularised, under-confident
    fit is not penalised for its scale alone. Picking the one least-loss penalty instead of
    averaging (:func:`penalty_weights`) was noisier on ~100 labels; the one-standard-error
    rule (the strongest penalty within one SE of the best) was measured against it on the
    four benchmark slides and lost on average: under balanced class weights it
    over-regularises the rare classes (lymph node, 10% labels: macro-F1 .51 against .59).
    """
    return {
        C: float(weighted_losses(log_softmax(temperature(lp, y, weights) * lp), y, weights).mean())
        for C, lp in oof.items()
    }
