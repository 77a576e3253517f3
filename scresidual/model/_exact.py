"""The exact engine (``solver="newton-cg"``): REFINE's linear arms as logistic regressions.

With linear residual encoders and a linear head every arm is a multinomial logistic
regression on standardised features: the linear probe on the frozen sources, scratch on the
residual inputs, REFINE on both. Each *block* (probe, scratch, and the side blocks that join
either where they help: :func:`join_side`) is fitted by sklearn's
``newton-cg`` solver with its penalty averaged by cross-validation and its logits scaled out
of fold (:func:`._convex.fit_block`); REFINE mixes the two blocks' calibrated
log-probabilities at the source share chosen out of fold (:func:`._selection.choose_share`),
and the guard compares all three out of fold (:func:`._selection.guard`). The result is kept
as what it is, an :class:`ExactHead`: standardisation, each block's coefficients, intercepts
and temperature, and the share. No network is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from .._errors import ScResidualError
from .._settings import settings
from ..module import Standardize
from ._convex import fit_block, scorable_rows
from ._selection import (
    AUTO_FOLDS,
    AUTO_FOLDS_BELOW,
    SOURCE_SHARES,
    EngineFit,
    choose_share,
    guard,
    mixed_log_proba,
    splits,
    weighted_losses,
)

BATCH = 8192
"""Cells per matrix product when predicting (bounds memory on large slides)."""


@dataclass
class ExactOptions:
    """Options read by the exact engine alone.

    Attributes
    ----------
    cv_repeats
        Rounds of ``folds``-fold cross-validation, averaged (``None``: 3 below 1,000 labelled
        cells, else 1: one round's choice of penalty is noisy on a few hundred labels).

    """

    cv_repeats: int | None = None


@dataclass
class Block:
    """One logistic-regression block: ``temperature * (raw logits)`` on standardised views.

    A branch joined by its side block (:func:`join_side`) is one block whose temperature is
    the two blocks' mean at the side block's weight: its raw logits are then approximate.
    """

    views: list[str]
    coef: np.ndarray  # (n_classes, n_features), temperature included
    intercept: np.ndarray  # (n_classes,), temperature included
    temperature: float  # out-of-fold scale; the raw fit is coef / temperature


@dataclass
class ExactHead:
    """An exactly fitted arm: standardisation, its blocks and (for REFINE) the source share.

    ``refine``'s logits are ``share * source block + (1 - share) * residual block``; the
    linear probe has only the source block, scratch only the residual one.
    """

    arm: str
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    source: Block | None = None
    residual: Block | None = None
    share: float | None = None
    blocks: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        self.blocks = tuple(b for b in ("source", "residual") if getattr(self, b) is not None)

    def _weights(self, raw: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Each block's ``(weight, bias)``, the share applied; the bias on the last block."""
        blocks = [getattr(self, b) for b in self.blocks]
        if self.share is None:
            (b,) = blocks
            w = torch.from_numpy(b.coef).float()
            bias = b.intercept / b.temperature if raw else b.intercept
            return [(w / b.temperature if raw else w, torch.tensor(bias, dtype=torch.float32))]
        s, r, share = self.source, self.residual, self.share
        # float32 first, then the share: the products the former network computed, so fits
        # saved before predict bit for bit as they did
        ws = torch.from_numpy(s.coef).float() * share
        wr = torch.from_numpy(r.coef).float() * (1 - share)
        if raw:
            bias = share * s.intercept / s.temperature + (1 - share) * r.intercept / r.temperature
            return [(ws / s.temperature, None), (wr / r.temperature, torch.tensor(bias).float())]
        bias = torch.from_numpy(s.intercept).float() * share + torch.from_numpy(
            r.intercept
        ).float() * (1 - share)
        return [(ws, None), (wr, bias)]

    @torch.no_grad()
    def logits(self, tensors, *, raw: bool = False) -> torch.Tensor:
        """Logits of every row of ``tensors``; ``raw``: without the blocks' temperatures."""
        weights = self._weights(raw)
        n = len(next(iter(tensors.values())))
        out = []
        for start in range(0, n, BATCH):
            part = {k: t[start : start + BATCH] for k, t in tensors.items()}
            z = 0
            for name, (w, b) in zip(self.blocks, weights, strict=True):
                x = standardised(part, getattr(self, name).views, self.mean, self.std)
                z = z + F.linear(x, w, b)
            out.append(z)
        return torch.cat(out)


def check_linear(config) -> None:
    """Refuse what the exact engine cannot fit: non-linear arms, heads or encoders."""
    if (
        config.arm not in ("refine", "scratch", "linear-probe")
        or config.head != "linear"
        or any(kind != "linear" for kind, _ in config.residuals.values())
    ):
        raise ScResidualError(
            f"solver={config.solver!r} (the exact engine) fits linear models only (arm "
            "refine/scratch/linear-probe, head 'linear', residual encoder 'linear'); use "
            "solver='adam' otherwise."
        )


def standardised(tensors, names, mean, std) -> torch.Tensor:
    """Views ``names`` as the network standardised them: float32 ``(x - mean) / std``, flat."""
    return torch.cat(
        [
            ((tensors[k].float() - torch.from_numpy(mean[k])) / torch.from_numpy(std[k])).flatten(1)
            for k in names
        ],
        1,
    )


def standardisation(tensors, names, moments=None) -> tuple[dict, dict]:
    """Per view, the mean and standard deviation of all rows (as the network computes them).

    ``moments``: per view ``(mean, std)`` computed elsewhere, used instead.
    """
    mean, std = {}, {}
    for k in names:
        norm = Standardize(tuple(tensors[k].shape[1:]))
        norm = norm.set(*moments[k]) if moments is not None else norm.fit(tensors[k])
        mean[k], std[k] = norm.mean.numpy(), norm.std.numpy()
    return mean, std


def branches(cfg) -> list[tuple[str, list[str]]]:
    """Each branch's block and its views: the probe on the sources, scratch on the residuals."""
    return [("linear-probe", list(cfg.sources)), ("scratch", list(cfg.residuals))]


def join_side(arm: str, parts: dict, oof: dict, reports: dict, y, weights, scored) -> None:
    """Fold ``arm``'s side block into it at the weight of least out-of-fold loss (in place).

    The weight is chosen as REFINE's source share is (:func:`._selection.choose_share`, ties
    to the first listed, 0): the branch's logits become ``(1 - w)`` times its own plus ``w``
    times the side block's, one linear block again. At ``w = 0`` the side block is refused
    and the branch is what it was without it. Without validation cells it is refused too.
    """
    name = f"{arm} side"
    w, scores = 0.0, {0.0: float("nan")}
    if scored is not None:
        w, scores = choose_share(
            oof[name][scored], oof[arm][scored], y, weights, SOURCE_SHARES["newton-cg"]
        )
    oof[arm] = mixed_log_proba(oof.pop(name), oof[arm], w)
    side, own = parts.pop(name), parts[arm]
    if w > 0:
        parts[arm] = Block(
            own.views + side.views,
            np.hstack([(1 - w) * own.coef, w * side.coef]),
            (1 - w) * own.intercept + w * side.intercept,
            (1 - w) * own.temperature + w * side.temperature,
        )
    reports[arm].update(side_share=w, cv_loss_by_side_share=scores, side_block=reports.pop(name))


def fit_exact(model, tensors, codes, labelled, weights, groups) -> EngineFit:
    """Fit the linear arms exactly; keep the guard's choice as an :class:`ExactHead`.

    Validated by ``cv_repeats`` rounds (default 3 below 1,000 labelled cells, else 1) of
    ``folds``-fold (default 5) cross-validation, whose out-of-fold predictions are averaged
    (one round over slides when ``groups`` hold them out), then refitted on every labelled
    cell. Too few labels to validate: ``C = 1``, share 0.5, no guard, no calibration.
    """
    cfg, options = model.config, model.options
    check_linear(cfg)
    own = {arm: [k for k in views if k not in cfg.side_blocks] for arm, views in branches(cfg)}
    side = {arm: [k for k in views if k in cfg.side_blocks] for arm, views in branches(cfg)}
    blocks = dict(own)
    if cfg.arm != "refine":
        blocks = {cfg.arm: blocks[cfg.arm]}
    elif not cfg.sources or not cfg.residuals:  # refine without a branch is that branch
        arm = "scratch" if cfg.residuals else "linear-probe"
        blocks = {arm: own[arm]}
    for arm in list(blocks):
        if side[arm]:  # fitted on its own, then joins its branch (see join_side)
            blocks[f"{arm} side"] = side[arm]
    y = codes[labelled]
    repeats = options.cv_repeats
    if repeats is None:
        repeats = 3 if len(labelled) < AUTO_FOLDS_BELOW else 1
    repeats = 1 if groups is not None else max(1, int(repeats))  # slide folds are fixed
    k = int(cfg.folds or AUTO_FOLDS)
    folds = [
        (np.searchsorted(labelled, tr), np.searchsorted(labelled, va))
        for r in range(repeats)
        for tr, va in splits(
            labelled,
            y,
            k=k,
            validation_size=cfg.validation_size,
            seed=cfg.seed,
            repeat=r,
            groups=groups,
        )
    ]
    if not all(len(va) for _, va in folds):
        folds = []  # too few labels to validate: default penalty, no guard
    w = None if weights is None else weights.numpy().astype(np.float64)
    mean, std = standardisation(tensors, [*cfg.sources, *cfg.residuals], model._fit_moments)
    rows = {name: t[labelled] for name, t in tensors.items()}
    jobs = cfg.n_jobs if cfg.n_jobs is not None else settings.n_jobs
    fits, parts = {}, {}
    for arm, names in blocks.items():
        X = standardised(rows, names, mean, std).double().numpy()
        fits[arm] = fit_block(
            X, y, folds, n_classes=len(model.classes_), weights=w, seed=cfg.seed, n_jobs=jobs or 1
        )
        f = fits[arm]
        parts[arm] = Block(list(names), f.coef, f.intercept, f.scale)
    oof = {arm: f.oof_log_proba for arm, f in fits.items()}
    reports = {
        arm: {
            "C": f.C,
            "logit_scale": f.scale,
            "cv_loss": f.cv_loss,
            "penalty_weights": f.penalty_weights,
            "n_members": 1,
        }
        for arm, f in fits.items()
    }
    scored = scorable_rows(y, folds) if folds else np.ones(len(y), dtype=bool)
    for arm in [a for a in blocks if f"{a} side" in blocks]:
        join_side(arm, parts, oof, reports, y[scored], w, scored if folds else None)
        del blocks[f"{arm} side"]
    stages = list(blocks)
    share = None
    if len(blocks) == 2:
        share, scores = 0.5, {0.5: float("nan")}
        if folds:
            share, scores = choose_share(
                oof["linear-probe"][scored],
                oof["scratch"][scored],
                y[scored],
                w,
                SOURCE_SHARES["newton-cg"] if cfg.source_shares is None else cfg.source_shares,
            )
        stages.append("refine")
        oof["refine"] = mixed_log_proba(oof["linear-probe"], oof["scratch"], share)
        reports["refine"] = {"source_share": share, "cv_loss_by_share": scores, "n_members": 1}
    val = {
        a: (weighted_losses(oof[a][scored], y[scored], w), oof[a][scored].argmax(1)) for a in stages
    }
    arm = cfg.arm if cfg.arm in stages else stages[0]  # refine without a branch is it
    chosen, report = guard(
        arm, stages, reports, val if folds else None, y[scored], on=cfg.guard, guard_z=cfg.guard_z
    )
    source = parts["linear-probe"] if chosen in ("refine", "linear-probe") else None
    residual = parts["scratch"] if chosen in ("refine", "scratch") else None
    used = [k for b in (source, residual) if b is not None for k in b.views]
    head = ExactHead(
        chosen,
        {k: mean[k] for k in used},
        {k: std[k] for k in used},
        source=source,
        residual=residual,
        share=share if chosen == "refine" else None,
    )
    # Out-of-fold predictions of the kept arm (for REFINE the mixture at the chosen share):
    # how the model does on cells it was not fitted on, for calibration.
    if folds:
        return EngineFit(head, chosen, report, labelled[scored], np.exp(oof[chosen][scored]))
    return EngineFit(head, chosen, report, np.array([], dtype=np.int64), None)
