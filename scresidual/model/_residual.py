"""The modality-agnostic REFINE classifier over named input views.

A *view* is one array with cells (samples) on the first axis: the features of a frozen
source, or the input of a residual encoder (flat features, graph hops, images, token
counts…). Pipelines for each modality turn their data into views; everything after that —
arms, training, the negative-transfer guard, prediction, saving — lives here, once.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold, train_test_split
from sklearn.utils.class_weight import compute_class_weight
from torch.nn import functional as F

from .. import __version__
from .._docs import doc_params, doc_progress
from .._errors import ScResidualError
from .._io import atomic_path, check_model_dir, recover
from .._logging import tqdm
from .._process import fork_map
from .._safe_load import check_state_fits, count_members
from .._settings import settings
from .._validate import labelled_mask, warn_placeholder_labels
from ..module import ENCODERS, EnsembleNetwork, ResidualNetwork, arm_uses, build_encoder
from ..train import ViewsDataset, as_tensor, batch_loader, seed_all
from ._calibration import Calibration, calibrate
from ._convex import fit_block, mixed_log_proba, scorable_rows, weighted_losses

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""On-disk format of saved models; bumped when old directories can no longer be read."""

AUTO_GROUP = 0.95
"""``group_folds="auto"`` holds out slides when at least this share of the cells is labelled."""

SOURCE_SHARES = {"adam": (0.0, 0.25, 0.5, 0.75, 1.0), "lbfgs": tuple(i / 10 for i in range(11))}
"""Default ``source_shares`` per solver: each ``adam`` candidate is a network evaluated on
validation, each ``lbfgs`` one a mixture of out-of-fold predictions already computed (a
finer grid costs nothing, and on BaristaSeq's annotated half the best share, 0.4, fell
between the coarse grid's 0.25 and 0.5: macro-F1 .644 against .656 at 0.4)."""

AUTO_FOLDS, AUTO_FOLDS_BELOW = 5, 1000
"""``folds=None`` cross-fits with 5 folds below 1,000 labelled cells (one 20% split would
validate on fewer than 200 cells: too few to early-stop or to guard reliably)."""


@dataclass
class ResidualConfig:
    """Everything needed to rebuild and retrain a :class:`ResidualModel`."""

    arm: str = "refine"
    sources: list[str] = field(default_factory=list)
    residuals: dict[str, list] = field(default_factory=dict)  # name -> [encoder, kwargs]
    head: str = "linear"
    solver: str = "adam"
    guard: bool = True
    source_dropout: float = 0.1
    lr: float = 1e-3
    probe_lr: float = 1e-2
    weight_decay: float = 1e-4
    source_weight_decay: float = 1e-2
    max_epochs: int = 200
    batch_size: int = 128
    patience: int = 20
    min_steps_per_epoch: int = 10
    guard_z: float = 1.0
    validation_size: float = 0.2
    folds: int | None = None
    group_folds: bool | str = "auto"
    cv_repeats: int | None = None
    source_shares: tuple[float, ...] | None = None  # None: the solver's grid (see below)
    n_jobs: int | None = None
    class_weight: str | None = "balanced"
    seed: int = 0
    teacher: str | None = None
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    lora_rank: int = 8
    lora_alpha: float = 16.0


TRAIN_OPTIONS = (
    "max_epochs",
    "lr",
    "probe_lr",
    "weight_decay",
    "source_weight_decay",
    "batch_size",
    "patience",
    "min_steps_per_epoch",
    "validation_size",
    "folds",
    "group_folds",
    "cv_repeats",
    "n_jobs",
)
"""Fields of :class:`ResidualConfig` that say how to train, not what the model is."""


def _available_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@doc_params(doc_progress=doc_progress)
class ResidualModel:
    """REFINE and its comparison arms on any modality.

    Parameters
    ----------
    arm
        ``"refine"`` (frozen source + residual encoder + linear head), ``"scratch"``,
        ``"linear-probe"``, ``"adapter"``, ``"kd"`` (scratch distilled from the logits in the
        view named by ``teacher=``) or ``"lora"`` (the source's last layer ``source_head``
        on its penultimate features, the view in ``sources``, plus a rank-8 update).
    sources
        Names of the views holding frozen source features.
    residuals
        ``{view name: (encoder name, encoder kwargs)}`` for the trainable residual
        encoders (see :data:`scresidual.module.ENCODERS`).
    head
        ``"linear"`` (default, robust) or ``"mlp"``.
    guard
        For ``refine``: fall back to ``scratch`` (or to the linear probe; both are fitted
        anyway, as REFINE's starting point) when its per-cell validation losses are lower than
        REFINE's by more than ``guard_z`` standard errors (a paired comparison), so the
        fitted model is not worse than ignoring the source beyond validation noise. What was
        chosen and why is in :attr:`chosen_arm_` and :attr:`guard_report_`.
    probe_lr
        (in ``config``) Learning rate of the linear probe (the arm, and REFINE's starting
        point): a convex fit on standardised features converges in tens of epochs at 1e-2,
        where ``lr`` (1e-3) had often not converged after 200.
    source_shares
        (in ``config``) REFINE starts from ``s * probe logits + (1 - s) * scratch logits``
        with the share ``s`` of these that has the lowest validation loss, then trains jointly.
        The grid includes both ends, so REFINE can start exactly at either fallback. ``None``
        (default): :data:`SOURCE_SHARES` of the solver.
    folds
        (in ``config``) Cross-fitting: with ``k`` folds every arm is fitted ``k`` times, each
        early-stopped on one fold of the labelled cells and trained on the rest; the guard
        compares out-of-fold losses on *all* labelled cells, and the fitted model averages the
        ``k`` members' probabilities, so no label is only spent on validation. ``None``
        (default): 5 folds below 1,000 labelled cells, else one ``validation_size`` split
        (none with ``validation_size=0``).
    group_folds
        (in ``config``) When :meth:`fit` is given ``groups`` (the slide of each cell) and the
        labelled cells span two or more, whether folds hold out whole groups (at most
        ``folds`` of them; leave-one-slide-out for a few slides). Folds should be drawn as the
        model will be used. A model fitted on fully labelled slides is for other slides, and
        folds drawn within slides cannot see that shift (BaristaSeq slices 1-2 → 3: macro-F1
        .82 left-one-slide-out against .76); a model fitted on partly labelled slides is for
        their unlabelled cells, and leaving slides out then chooses worse (BaristaSeq,
        annotated half of each slice: .61 against .65). ``"auto"`` (default): hold out
        slides when at least 95% of the cells are labelled; ``True``/``False``: always/never.
    solver
        (in ``config``) ``"adam"`` (default): every arm trained by gradient descent with
        early stopping, as above. ``"lbfgs"``: linear arms only (``refine``, ``scratch``,
        ``linear-probe`` with ``linear`` residual encoders and head), fitted exactly as
        logistic regressions with cross-validated penalties; see :mod:`._convex`.
    cv_repeats
        (in ``config``) With ``solver="lbfgs"``: rounds of ``folds``-fold cross-validation
        (``None``: 3 below 1,000 labelled cells, else 1).
    n_jobs
        (in ``config``) Processes fitting the folds in parallel. ``None`` (default): one per
        available CPU when training on one CPU device, else 1 (GPUs and DDP fit folds in
        turn), unless :attr:`scresidual.settings.n_jobs` is set. The result does not
        depend on it.
    seed
        Seed for initialisation, data splits and batch order (default
        :attr:`scresidual.settings.seed`).
    accelerator, devices, strategy
        Passed to :class:`lightning.pytorch.Trainer`.
    progress
        {doc_progress}
    source_head
        For ``lora``: ``{"weight": (n_classes, n_features), "bias": (n_classes,)}``, the frozen
        source's last linear layer (saved with the model; not needed by :meth:`load`).
    source_classes
        Class labels of the rows of ``source_head`` and of the teacher's logit columns, in
        order; they are reordered to :attr:`classes_`. Default: already in that order.
    **config
        Training options of :class:`ResidualConfig` (``max_epochs``, ``lr``, …).

    """

    def __init__(
        self,
        *,
        arm: str = "refine",
        sources: Sequence[str] = (),
        residuals: Mapping[str, tuple[str, dict]] | None = None,
        head: str = "linear",
        guard: bool = True,
        seed: int | None = None,
        accelerator: str = "auto",
        devices: int | str = "auto",
        strategy: str = "auto",
        progress: bool | None = None,
        source_head: Mapping[str, np.ndarray] | None = None,
        source_classes: Sequence | None = None,
        **config,
    ):
        arm_uses(arm)  # validates the name
        unknown = set(config) - set(ResidualConfig.__dataclass_fields__)
        if unknown:
            raise ScResidualError(
                f"unknown training option(s) {sorted(unknown)}; see ResidualConfig for the options."
            )
        residuals = {k: [v[0], dict(v[1])] for k, v in (residuals or {}).items()}
        self.config = ResidualConfig(
            arm=arm,
            sources=list(sources),
            residuals=residuals,
            head=head,
            guard=guard,
            seed=settings.seed if seed is None else seed,
            **config,
        )
        self.trainer_kwargs = {"accelerator": accelerator, "devices": devices, "strategy": strategy}
        self.progress = progress
        self.source_head = source_head
        self.source_classes = None if source_classes is None else [str(c) for c in source_classes]
        self.network: ResidualNetwork | None = None
        self.classes_: list[str] = []
        self.shapes_: dict[str, tuple[int, ...]] = {}
        self.chosen_arm_: str | None = None
        self.guard_report_: dict[str, dict] = {}
        self.oof_rows_: np.ndarray | None = None  # labelled rows predicted out of fold
        self.oof_proba_: np.ndarray | None = None  # … and their out-of-fold probabilities
        self.calibration_: Calibration | None = None  # fitted on them (see _calibration)
        self.calibration_note_: str | None = None  # why there is none
        # Exact linear fits: each head's out-of-fold logit scale and the unscaled bias, to
        # undo every temperature (``predict_proba(raw=True)``, the uncalibrated baseline).
        self.unscaled_: dict | None = None

    # ------------------------------------------------------------------ building
    @property
    def view_names(self) -> list[str]:
        """Views this model reads."""
        return [*self.config.sources, *self.config.residuals]

    def _build(self, arm: str) -> ResidualNetwork:
        use_source, use_residual = arm_uses(arm)
        encoders = {}
        if use_residual:
            for name, (kind, kwargs) in self.config.residuals.items():
                n_in = (
                    int(np.prod(self.shapes_[name][:1]))
                    if kind == "cnn"
                    else int(np.prod(self.shapes_[name]))
                )
                encoders[name] = build_encoder(kind, n_in, **kwargs)
        return ResidualNetwork(
            arm=arm,
            source_shapes={k: self.shapes_[k] for k in self.config.sources},
            residual_shapes={k: self.shapes_[k] for k in self.config.residuals},
            encoders=encoders,
            n_classes=len(self.classes_),
            head=self.config.head,
            source_dropout=self.config.source_dropout,
            teacher=self.config.teacher,
            kd_alpha=self.config.kd_alpha,
            kd_temperature=self.config.kd_temperature,
            source_head=self._aligned_head() if arm == "lora" else None,
            lora_rank=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha,
        )

    def _class_order(self, n_rows: int, what: str) -> np.ndarray:
        """Row order that maps the source's classes onto :attr:`classes_`."""
        if self.source_classes is None:
            if n_rows != len(self.classes_):
                raise ScResidualError(
                    f"{what} has {n_rows} classes but the labels have {len(self.classes_)}; "
                    "pass source_classes= naming the source's classes in order."
                )
            return np.arange(n_rows)
        missing = [c for c in self.classes_ if c not in self.source_classes]
        if missing or len(self.source_classes) != n_rows:
            raise ScResidualError(
                f"source_classes ({len(self.source_classes)}) do not match {what} ({n_rows} rows)"
                f" or miss target classes {missing}; list the source's classes in row order."
            )
        return np.array([self.source_classes.index(c) for c in self.classes_])

    def _aligned_head(self) -> dict | None:
        """``source_head`` with rows in the order of :attr:`classes_` (None after load)."""
        if self.source_head is None:
            return None
        w, b = (np.asarray(self.source_head[k], dtype=np.float32) for k in ("weight", "bias"))
        order = self._class_order(len(w), "source_head")
        return {"weight": torch.from_numpy(w[order]), "bias": torch.from_numpy(b[order])}

    def _tensors(
        self, views: Mapping[str, np.ndarray], n: int | None = None, extra: Sequence[str] = ()
    ) -> dict:
        names = [*self.view_names, *extra]
        missing = [k for k in names if k not in views]
        if missing:
            raise ScResidualError(f"missing input view(s) {missing}; this model reads {names}.")
        out = {}
        for k in names:
            t = as_tensor(views[k])
            if n is not None and len(t) != n:
                raise ScResidualError(f"view {k!r} has {len(t)} rows but there are {n} labels.")
            if k in self.shapes_ and tuple(t.shape[1:]) != tuple(self.shapes_[k]):
                raise ScResidualError(
                    f"view {k!r} has shape {tuple(t.shape[1:])} per sample, but the model was "
                    f"fitted on {tuple(self.shapes_[k])}; use the same features as at fit time."
                )
            if not torch.isfinite(t).all():
                raise ScResidualError(f"view {k!r} holds NaN/inf values; clean or impute it first.")
            out[k] = t
        return out

    # ------------------------------------------------------------------ fitting
    def fit(self, views: Mapping[str, np.ndarray], y, *, groups=None) -> ResidualModel:
        """Fit on the labelled rows of ``y`` (NaN/None/'' marks an unlabelled row).

        Unlabelled rows still set the standardisation statistics of the inputs. ``groups``
        (one value per row, e.g. the slide) makes validation folds hold out whole groups
        (see ``group_folds``).
        """
        cfg = self.config
        y = np.asarray(y, dtype=object)
        self._check_arm_inputs()
        self.shapes_ = {}
        extra = [cfg.teacher] if cfg.arm == "kd" else []
        tensors = self._tensors(views, n=len(y), extra=extra)
        self.shapes_ = {k: tuple(t.shape[1:]) for k, t in tensors.items() if k not in extra}
        codes = self._encode_labels(y)
        if extra:
            teacher = tensors[cfg.teacher]
            order = self._class_order(teacher.shape[1] if teacher.ndim == 2 else -1, "teacher")
            tensors[cfg.teacher] = teacher[:, torch.from_numpy(order)]
        labelled = np.flatnonzero(codes >= 0)
        weights = None
        if cfg.class_weight == "balanced":
            weights = torch.tensor(
                compute_class_weight(
                    "balanced", classes=np.arange(len(self.classes_)), y=codes[labelled]
                ),
                dtype=torch.float32,
            )
        groups = self._fold_groups(groups, labelled, len(y))
        if cfg.solver == "lbfgs":
            return self._fit_convex(tensors, codes, labelled, weights, groups)
        return self._fit_gradient(tensors, codes, labelled, weights, groups)

    def _check_arm_inputs(self) -> None:
        """Refuse the arms that need inputs the model was not given."""
        cfg = self.config
        if cfg.arm == "kd" and cfg.teacher is None:
            raise ScResidualError("arm 'kd' needs teacher='<view with the teacher's logits>'.")
        if cfg.arm == "lora" and (self.source_head is None or not cfg.sources):
            raise ScResidualError(
                "arm 'lora' needs source_head={'weight': W, 'bias': b} (the source's last layer) "
                "and sources=[the view of its penultimate features]."
            )

    def _encode_labels(self, y: np.ndarray) -> np.ndarray:
        """Set :attr:`classes_`; class codes of ``y``, -1 for unlabelled rows."""
        warn_placeholder_labels(y)
        mask = labelled_mask(y)
        labels = np.array([str(v) for v in y[mask]], dtype=object)
        self.classes_ = sorted(set(labels))
        self.unscaled_ = None
        if len(self.classes_) < 2:
            raise ScResidualError(
                f"need labels of at least 2 classes to train, found {len(self.classes_)} "
                f"among {int(mask.sum())} labelled cells; label more cells or check labels_key."
            )
        codes = np.full(len(y), -1, dtype=np.int64)
        codes[mask] = pd.Categorical(labels, categories=self.classes_).codes
        return codes

    def _fit_gradient(self, tensors, codes, labelled, weights, groups) -> ResidualModel:
        """Fit every stage by gradient descent on each split; keep the guard's choice."""
        cfg = self.config
        y_t = torch.from_numpy(codes)
        # REFINE starts from a fitted linear probe and scratch model (see
        # ResidualNetwork.start_from); with the guard they are also its fallbacks.
        stages = [cfg.arm]
        if cfg.arm == "refine" and cfg.sources and cfg.residuals and cfg.head == "linear":
            stages = ["linear-probe", "scratch", "refine"]
        splits = self._splits(labelled, codes[labelled], groups=groups)
        jobs = self._n_jobs(len(splits))
        if len(splits) > 1:
            logger.info(
                "%s: cross-fitting %d folds (%d in parallel)", "/".join(stages), len(splits), jobs
            )
        args = [(stages, tensors, y_t, tr, va, weights) for tr, va in splits]
        if jobs > 1:  # folds are independent: fit them in worker processes, one CPU each
            fits = self._fit_folds_in_workers(args, jobs)
        else:
            fits = [self._fit_fold(*a) for a in args]
        members, reports, oof = self._out_of_fold(
            stages, splits, fits, tensors, y_t, labelled, weights
        )
        losses, preds, probas = oof
        validated = ~np.isnan(losses[stages[0]])
        y_val = codes[labelled][validated]
        val = {a: (losses[a][validated], preds[a][validated]) for a in stages}
        arm = self._choose(cfg.arm, stages, reports, val if validated.any() else None, y_val)
        chosen = members[arm]
        self.network = (chosen[0] if len(chosen) == 1 else EnsembleNetwork(chosen)).eval()
        if len(splits) > 1:  # cross-fitted: every labelled cell was predicted out of fold
            self._keep_oof(labelled[validated], probas[arm][validated], codes)
        else:
            self._keep_oof(
                np.array([], dtype=np.int64),
                None,
                codes,
                note=(
                    "the model was fitted on one validation split, without cross-fitting, so it "
                    "has no out-of-fold predictions of every labelled cell to calibrate on: refit "
                    "it with folds=5 (CLI --folds 5) for calibrated probabilities and sets."
                ),
            )
        return self

    def _out_of_fold(self, stages, splits, fits, tensors, y_t, labelled, weights):
        """Members and reports per stage, and per labelled cell its validation results.

        Loss, prediction and probabilities, one slot per labelled cell (out of fold when
        cross-fitted: every labelled cell is validated once).
        """
        members = {arm: [] for arm in stages}
        epochs = {arm: [] for arm in stages}
        shares = {arm: [] for arm in stages}
        losses = {arm: np.full(len(labelled), np.nan) for arm in stages}
        preds = {arm: np.full(len(labelled), -1) for arm in stages}
        probas = {arm: np.zeros((len(labelled), len(self.classes_))) for arm in stages}
        w = torch.ones(len(self.classes_)) if weights is None else weights
        for (_, val_idx), fold_fits in zip(splits, fits, strict=True):
            for arm, net, best_epoch, share in fold_fits:
                members[arm].append(net)
                epochs[arm].append(best_epoch)
                shares[arm].append(share)
                if not len(val_idx):
                    continue
                logits = self._logits(net, {k: t[val_idx] for k, t in tensors.items()})
                y_val = y_t[val_idx]
                # Weighted per-cell losses, for a paired comparison of the candidates.
                per_cell = F.cross_entropy(logits, y_val, reduction="none") * w[y_val]
                slot = np.searchsorted(labelled, val_idx)
                losses[arm][slot] = (per_cell / w[y_val].mean()).numpy()
                preds[arm][slot] = logits.argmax(1).numpy()
                probas[arm][slot] = torch.softmax(logits, 1).numpy()
        reports = {}
        for arm in stages:
            reports[arm] = {"best_epochs": epochs[arm], "n_members": len(members[arm])}
            if any(x is not None for x in shares[arm]):
                reports[arm]["source_shares"] = shares[arm]
        return members, reports, (losses, preds, probas)

    def _keep_oof(self, rows, proba, codes, note: str | None = None) -> None:
        """Keep the kept arm's out-of-fold predictions of ``rows`` and calibrate on them."""
        self.oof_rows_ = rows
        self.oof_proba_ = proba if proba is not None else np.zeros((0, len(self.classes_)))
        if note is not None:
            self.calibration_, self.calibration_note_ = None, note
            return
        self.calibration_, self.calibration_note_ = calibrate(self, codes[rows])

    def _choose(self, arm, stages, reports, val, y_val) -> str:
        """Fill :attr:`guard_report_` and keep ``arm``, or the fallback the guard prefers.

        ``val``: ``{arm: (per-cell validation losses, predicted codes)}``, or None without
        validation cells.
        """
        val_losses = {}
        for stage in stages:
            val_losses[stage] = None if val is None else val[stage][0]
            if val is None:
                reports[stage]["val_loss"] = float("nan")
                continue
            reports[stage]["val_loss"] = float(val[stage][0].mean())
            reports[stage]["val_macro_f1"] = float(
                f1_score(y_val, val[stage][1], average="macro", zero_division=0)
            )
        self.guard_report_ = reports
        fallbacks = [a for a in stages if a != arm] if self.config.guard else []
        if not self.config.guard:  # the starting points were fitted, but only the arm is kept
            self.guard_report_ = {arm: reports[arm]}
        self.chosen_arm_ = self._guard_choice(arm, fallbacks, val_losses)
        if fallbacks:
            logger.info(
                "guard: kept %r (validation loss %s)",
                self.chosen_arm_,
                ", ".join(f"{a}={r['val_loss']:.4f}" for a, r in self.guard_report_.items()),
            )
        return self.chosen_arm_

    def _fit_convex(self, tensors, codes, labelled, weights, groups) -> ResidualModel:
        """Fit the linear arms exactly (``solver="lbfgs"``); see :mod:`._convex`.

        The probe and scratch are logistic regressions on the standardised source features
        and residual inputs, each averaged over penalties by out-of-fold evidence
        (:func:`._convex.fit_block`); REFINE is the linear head on both, weighted by the
        source share whose out-of-fold mixture validates best (the starting point of the
        ``adam`` solver, here exact). Validated by
        ``cv_repeats`` rounds (default 3 below 1,000 labelled cells, else 1) of ``folds``-fold
        (5) cross-validation, whose out-of-fold predictions are averaged (a few hundred labels
        make one round's choice noisy), then refitted on every labelled cell.
        """
        cfg = self.config
        if (
            cfg.arm not in ("refine", "scratch", "linear-probe")
            or cfg.head != "linear"
            or any(kind != "linear" for kind, _ in cfg.residuals.values())
        ):
            raise ScResidualError(
                "solver='lbfgs' fits linear models only (arm refine/scratch/linear-probe, "
                "head 'linear', residual encoder 'linear'); use solver='adam' otherwise."
            )
        base = {"linear-probe": [], "scratch": []}
        if cfg.arm != "refine":
            base = {cfg.arm: []}
        elif not cfg.sources or not cfg.residuals:  # refine without a branch is that branch
            base = {"scratch" if cfg.residuals else "linear-probe": []}
        y = codes[labelled]
        repeats = 1 if groups is not None else self._cv_repeats(len(labelled))  # fixed folds
        folds = [
            (np.searchsorted(labelled, tr), np.searchsorted(labelled, va))
            for r in range(repeats)
            for tr, va in self._splits(
                labelled, y, n_folds=int(cfg.folds or AUTO_FOLDS), repeat=r, groups=groups
            )
        ]
        if not all(len(va) for _, va in folds):
            folds = []  # too few labels to validate: default penalty, no guard
        w = None if weights is None else weights.numpy().astype(np.float64)
        rows = {name: t[labelled] for name, t in tensors.items()}
        nets, fits = {}, {}
        for arm in base:
            net = self._build(arm)
            net.fit_normalisation(tensors)
            net.eval()
            with torch.no_grad():
                X = (
                    (
                        net.source_features(rows)
                        if arm == "linear-probe"
                        else net.residual_features(rows)
                    )
                    .double()
                    .numpy()
                )
            fits[arm] = fit_block(
                X, y, folds, n_classes=len(self.classes_), weights=w, seed=cfg.seed
            )
            head = net.head_source if arm == "linear-probe" else net.head_residual
            with torch.no_grad():
                head.weight.copy_(torch.from_numpy(fits[arm].coef))
                head.bias.copy_(torch.from_numpy(fits[arm].intercept))
            nets[arm] = net
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
        stages = list(base)
        rows = scorable_rows(y, folds) if folds else np.ones(len(y), dtype=bool)
        if len(base) == 2:
            scores = (
                {
                    s: float(
                        weighted_losses(
                            mixed_log_proba(oof["linear-probe"][rows], oof["scratch"][rows], s),
                            y[rows],
                            w,
                        ).mean()
                    )
                    for s in self._source_shares()
                }
                if folds
                else {0.5: float("nan")}
            )
            share = min(scores, key=scores.get)
            net = self._build("refine")
            net.start_from(nets["linear-probe"], nets["scratch"], share)
            nets["refine"], stages = net, [*stages, "refine"]
            oof["refine"] = mixed_log_proba(oof["linear-probe"], oof["scratch"], share)
            reports["refine"] = {"source_share": share, "cv_loss_by_share": scores, "n_members": 1}
        val = {
            a: (weighted_losses(oof[a][rows], y[rows], w), oof[a][rows].argmax(1)) for a in stages
        }
        arm = cfg.arm if cfg.arm in stages else stages[0]  # refine without a branch is it
        val = val if folds else None
        chosen = self._choose(arm, stages, reports, val, y[rows])
        self.network = nets[chosen].eval()
        self.unscaled_ = _unscaled(chosen, fits, reports.get("refine", {}).get("source_share"))
        # Out-of-fold predictions of the kept arm (for REFINE the mixture at the chosen
        # source share): how the model does on cells it was not fitted on, for calibration.
        if folds:
            self._keep_oof(labelled[rows], np.exp(oof[chosen][rows]), codes)
        else:
            self._keep_oof(np.array([], dtype=np.int64), None, codes)
        return self

    def _source_shares(self) -> tuple[float, ...]:
        """The source shares tried: ``source_shares``, else the solver's default grid."""
        shares = self.config.source_shares
        if shares is None:
            shares = SOURCE_SHARES["lbfgs" if self.config.solver == "lbfgs" else "adam"]
        return tuple(shares)

    def _cv_repeats(self, n_labelled: int) -> int:
        """Rounds of cross-validation: ``cv_repeats``, else 3 below 1,000 labelled cells.

        One round's choice of penalty is noisy on a few hundred labels; above, one round.
        """
        repeats = self.config.cv_repeats
        if repeats is None:
            repeats = 3 if n_labelled < AUTO_FOLDS_BELOW else 1
        return max(1, int(repeats))

    def _n_jobs(self, n_folds: int) -> int:
        """Worker processes for the folds: one per CPU when training on CPU, else 1."""
        jobs = settings.n_jobs if self.config.n_jobs is None else self.config.n_jobs
        if jobs is None:
            kw = self.trainer_kwargs
            cpu = kw["accelerator"] == "cpu" or (
                kw["accelerator"] == "auto"
                and not torch.cuda.is_available()
                and not torch.backends.mps.is_available()
            )
            single = kw["strategy"] == "auto" and kw["devices"] in ("auto", 1)
            jobs = _available_cpus() if cpu and single else 1
        return max(1, min(int(jobs), n_folds))

    def _fit_folds_in_workers(self, args: list[tuple], jobs: int) -> list:
        """``_fit_fold`` over ``args`` in ``jobs`` processes, in order.

        On Linux the workers are forked: they inherit the imported modules (Lightning takes
        seconds to import), the data and any registered encoders, so they start at once.
        Elsewhere (fork is unsafe on macOS) joblib's loky workers start fresh and are sent
        the registered encoders. Workers send back weights, rebuilt into networks here.
        """
        bar = {"total": len(args), "desc": "cross-fitted folds", "progress": self.progress}
        if sys.platform.startswith("linux"):
            with warnings.catch_warnings():
                # Python >= 3.12 warns on forking a threaded process (torch's OpenMP pool);
                # the workers leave that pool alone (see _fit_fold_in_worker).
                warnings.filterwarnings("ignore", ".*fork.*", DeprecationWarning)
                fits = list(
                    tqdm(
                        fork_map(lambda i: self._fit_fold_in_worker(*args[i]), len(args), jobs),
                        **bar,
                    )
                )
        else:
            from joblib import Parallel, delayed

            kinds = {k: ENCODERS[k] for k, _ in self.config.residuals.values() if k in ENCODERS}
            fits = list(
                tqdm(
                    Parallel(n_jobs=jobs, return_as="generator")(
                        delayed(self._fit_fold_in_worker)(*a, encoders=kinds) for a in args
                    ),
                    **bar,
                )
            )
        return [
            [(arm, self._rebuild(arm, state), *rest) for arm, state, *rest in fold] for fold in fits
        ]

    def _fit_fold_in_worker(self, *args, encoders: Mapping | None = None) -> list:
        """``_fit_fold`` in a worker process, returning state dicts instead of networks.

        A network may not pickle (an encoder class defined in a notebook cell), its weights
        always do. ``encoders``: the registered encoders, for a fresh (not forked) worker.
        """
        # First, before any torch operation: a forked child must not enter the OpenMP pool
        # it inherited from its parent (the pattern of torch's own data-loader workers).
        torch.set_num_threads(1)
        self.progress = False  # bars from several processes would interleave
        ENCODERS.update(encoders or {})
        return [(arm, net.state_dict(), *rest) for arm, net, *rest in self._fit_fold(*args)]

    def _rebuild(self, arm: str, state: dict) -> ResidualNetwork:
        net = self._build(arm)
        net.load_state_dict(state)
        return net

    def _fit_fold(self, stages, tensors, y_t, train_idx, val_idx, weights):
        """Fit the stages on one split: ``[(arm, network, best epoch, source share), ...]``."""
        fitted, out = {}, []
        for arm in stages:
            net, best_epoch, share = self._fit_stage(
                arm, tensors, y_t, train_idx, val_idx, weights, fitted
            )
            fitted[arm] = net
            out.append((arm, net, best_epoch, share))
        return out

    def _fit_stage(self, arm, tensors, y_t, train_idx, val_idx, weights, fitted):
        """Fit one arm on one split; ``fitted`` holds this split's earlier stages."""
        from ..train import train_network  # imports Lightning: only when fitting

        cfg = self.config
        seed_all(cfg.seed)
        net = self._build(arm)
        net.fit_normalisation(tensors)
        started = (
            arm == "refine"
            and len(fitted) == 2
            and net.start_from(fitted["linear-probe"], fitted["scratch"])
        )
        share = None
        if started:
            # The source's share of the starting logits, chosen on validation: a harmful
            # source starts down-weighted, an informative one up-weighted.
            share, scores = 0.5, {}
            shares = self._source_shares()
            if len(val_idx) and len(shares) > 1:
                val = {k: t[val_idx] for k, t in tensors.items()}
                for s in shares:
                    net.start_from(fitted["linear-probe"], fitted["scratch"], s)
                    scores[s] = float(
                        F.cross_entropy(self._logits(net, val), y_t[val_idx], weight=weights)
                    )
                share = min(scores, key=scores.get)
            net.start_from(fitted["linear-probe"], fitted["scratch"], share)
        result = train_network(
            net,
            tensors,
            y_t,
            train_idx,
            val_idx,
            max_epochs=cfg.max_epochs,
            batch_size=cfg.batch_size,
            lr=cfg.probe_lr if arm == "linear-probe" else cfg.lr,
            weight_decay=cfg.weight_decay,
            source_weight_decay=cfg.source_weight_decay,
            patience=cfg.patience,
            min_steps_per_epoch=cfg.min_steps_per_epoch,
            keep_start=started,
            class_weights=weights,
            seed=cfg.seed,
            progress=self.progress,
            **self.trainer_kwargs,
        )
        return net, result.best_epoch, share

    def _guard_choice(self, arm: str, fallbacks: list[str], val_losses: dict) -> str:
        """Keep ``arm`` unless a fallback is better beyond validation noise.

        Per-cell validation losses are compared in pairs: a fallback (scratch, or the linear
        probe) qualifies only if ``mean(d) > guard_z * se(d)`` with ``d = loss(arm) -
        loss(fallback)``, i.e. when the residual branch or the source measurably hurts; of
        the qualifying fallbacks the one with the lowest loss is kept. A plain "lowest mean
        loss wins" rule would flip on noise with the few dozen validation cells of a
        sparsely labelled slide.
        """
        if val_losses.get(arm) is None:
            return arm
        qualified = {}
        for other in fallbacks:
            d = val_losses[arm] - val_losses[other]
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
            self.guard_report_[other]["paired_loss_difference"] = float(d.mean())
            self.guard_report_[other]["paired_standard_error"] = se
            if d.mean() > self.config.guard_z * se:
                qualified[other] = float(val_losses[other].mean())
        return min(qualified, key=qualified.get) if qualified else arm

    def n_folds(self, n_labelled: int) -> int:
        """Cross-fitting folds used for ``n_labelled`` labelled cells (1: one split)."""
        folds = self.config.folds
        if folds is None:  # auto: cross-fit while one split would validate on < 200 cells
            small = n_labelled < AUTO_FOLDS_BELOW and self.config.validation_size
            folds = AUTO_FOLDS if small else 1
        return int(folds) if n_labelled >= 2 * int(folds) else 1

    def _fold_groups(self, groups, labelled: np.ndarray, n: int) -> np.ndarray | None:
        """Group codes of every row if folds should hold out groups (see ``group_folds``)."""
        mode = self.config.group_folds
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

    def _splits(
        self,
        labelled: np.ndarray,
        codes: np.ndarray,
        n_folds: int | None = None,
        repeat: int = 0,
        groups: np.ndarray | None = None,
    ) -> list[tuple[np.ndarray, ...]]:
        """``(train, validation)`` index pairs: k folds, one split, or no validation."""
        seed = self.config.seed + 7919 * repeat  # another shuffle for each repeat
        k = self.n_folds(len(labelled)) if n_folds is None else min(n_folds, len(labelled) // 2)
        counts = np.bincount(codes)
        if k > 1 and groups is not None:
            g = groups[labelled]
            k = min(k, len(np.unique(g)))
            return [
                (labelled[tr], labelled[va]) for tr, va in GroupKFold(k).split(labelled, codes, g)
            ]
        if k > 1:
            # Stratify when every class can appear in each fold's training part (and
            # sklearn can: some class must have at least k cells).
            if counts[counts > 0].min() >= 2 and counts.max() >= k:
                with warnings.catch_warnings():  # classes rarer than k: sklearn warns
                    warnings.simplefilter("ignore", UserWarning)
                    folds = StratifiedKFold(k, shuffle=True, random_state=seed)
                    parts = list(folds.split(labelled, codes))
            else:
                parts = list(KFold(k, shuffle=True, random_state=seed).split(labelled))
            return [(labelled[tr], labelled[va]) for tr, va in parts]
        size = self.config.validation_size
        if not size or len(labelled) < 10:
            return [(labelled, np.array([], dtype=np.int64))]
        stratify = codes if counts[counts > 0].min() >= 2 else None
        try:
            train, val = train_test_split(
                labelled, test_size=size, stratify=stratify, random_state=seed
            )
        except ValueError:  # too few cells per class for a stratified split
            train, val = train_test_split(labelled, test_size=size, random_state=seed)
        return [(np.sort(train), np.sort(val))]

    # ------------------------------------------------------------------ prediction
    @staticmethod
    @torch.no_grad()
    def _logits(net: ResidualNetwork, tensors: Mapping[str, torch.Tensor], batch_size=8192):
        training = net.training
        net.eval()
        loader = batch_loader(ViewsDataset(tensors), batch_size=batch_size, shuffle=False)
        logits = torch.cat([net(b["views"]) for b in loader])
        net.train(training)  # scoring a starting point must not switch dropout off for training
        return logits

    def _check_fitted(self) -> ResidualNetwork:
        if self.network is None:
            raise ScResidualError("the model is not fitted yet; call fit() or load() first.")
        return self.network

    def predict_proba(self, views: Mapping[str, np.ndarray], *, raw: bool = False) -> np.ndarray:
        """Class probabilities, columns in the order of :attr:`classes_`.

        ``raw``: of an exact linear fit, the logistic regressions' own probabilities, without
        the out-of-fold scale of each block (the uncalibrated baseline); other models have
        no such scale and give the same either way.
        """
        net = self._check_fitted()
        if raw and self.unscaled_:
            net = copy.deepcopy(net)
            u = self.unscaled_
            with torch.no_grad():
                for name in ("head_source", "head_residual"):
                    head = getattr(net, name, None)
                    if head is None or u.get(name) is None:
                        continue
                    head.weight.div_(u[name])
                    if head.bias is not None:
                        head.bias.copy_(torch.tensor(u["bias"], dtype=head.bias.dtype))
        return torch.softmax(self._logits(net, self._tensors(views)), 1).numpy()

    def predict(self, views: Mapping[str, np.ndarray]) -> np.ndarray:
        """Predicted class labels."""
        return np.asarray(self.classes_, dtype=object)[self.predict_proba(views).argmax(1)]

    # ------------------------------------------------------------------ saving
    def write(self, directory: Path) -> None:
        """Write the model's files into an existing directory (not atomic; see :meth:`save`)."""
        net = self._check_fitted()
        meta = {
            "format": FORMAT_VERSION,
            "scresidual_version": __version__,
            "config": asdict(self.config),
            "classes": self.classes_,
            "shapes": {k: list(v) for k, v in self.shapes_.items()},
            "chosen_arm": self.chosen_arm_,
            "n_members": len(net.members) if isinstance(net, EnsembleNetwork) else 1,
            "guard_report": self.guard_report_,
            "calibration": (
                self.calibration_.to_dict()
                if self.calibration_ is not None
                else {"note": self.calibration_note_}
            ),
            "unscaled": self.unscaled_,
        }
        (directory / "residual_model.json").write_text(json.dumps(meta, indent=2))
        torch.save(net.state_dict(), directory / "residual_model.pt")

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Save to a directory, atomically (a reader never sees half a model)."""
        check_model_dir(path, overwrite=overwrite, flag="overwrite=True")
        with atomic_path(path) as tmp:
            tmp.mkdir()
            self.write(tmp)

    @classmethod
    def load(
        cls, path: str | Path, *, progress: bool | None = None, **trainer_kwargs
    ) -> ResidualModel:
        """Load a model saved with :meth:`save` (or written by a pipeline's ``save``)."""
        path = Path(path)
        recover(path)
        meta_file, state_file = path / "residual_model.json", path / "residual_model.pt"
        if not meta_file.is_file() or not state_file.is_file():
            raise ScResidualError(
                f"{path} is not a scresidual model directory (no residual_model.json/.pt); "
                "pass the directory written by save()."
            )
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ScResidualError(
                f"{meta_file} is corrupted ({err}); refit and save again."
            ) from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            meta = meta if isinstance(meta, dict) else {}
            raise ScResidualError(
                f"{path} was written by scresidual {meta.get('scresidual_version', '?')} in "
                f"format {meta.get('format')}; this version ({__version__}) reads format "
                f"{FORMAT_VERSION}: refit the model or install the matching version."
            )
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for damaged files
            raise ScResidualError(
                f"cannot read the weights in {state_file} ({type(err).__name__}); the file is "
                "corrupted: refit and save again."
            ) from err
        try:
            model = cls._from_meta(meta, progress=progress, **trainer_kwargs)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ScResidualError(
                f"{meta_file} is corrupted ({type(err).__name__}: {err}); refit and save again."
            ) from err
        # Sizes in the JSON are only trusted as far as the weights file bears them out.
        n_members = count_members(state) if isinstance(state, dict) else 0
        if n_members != meta.get("n_members", 1):
            raise ScResidualError(
                f"{meta_file} lists {meta.get('n_members')} members but {state_file} holds "
                f"{n_members}; the folder is corrupted or was edited: refit and save again."
            )
        check_state_fits(lambda: model._network(n_members), state, path)
        net = model._network(n_members)
        net.load_state_dict(state, strict=True)
        model.network = net.eval()
        return model

    @classmethod
    def _from_meta(cls, meta: dict, **kwargs) -> ResidualModel:
        """An unfitted model with the configuration, classes and shapes of ``meta``."""
        cfg = dict(meta["config"])
        arm, sources, residuals = cfg.pop("arm"), cfg.pop("sources"), cfg.pop("residuals")
        head, guard, seed = cfg.pop("head"), cfg.pop("guard"), cfg.pop("seed")
        model = cls(
            arm=arm,
            sources=sources,
            residuals=residuals,
            head=head,
            guard=guard,
            seed=seed,
            **kwargs,
            **cfg,
        )
        model.classes_ = [str(c) for c in meta["classes"]]
        model.shapes_ = {k: tuple(int(d) for d in v) for k, v in meta["shapes"].items()}
        model.chosen_arm_ = str(meta["chosen_arm"])
        model.guard_report_ = meta.get("guard_report", {})
        cal = meta.get("calibration") or {}
        model.calibration_ = Calibration.from_dict(cal) if "scores" in cal else None
        model.calibration_note_ = str(cal["note"])[:500] if cal.get("note") else None
        model.unscaled_ = _read_unscaled(meta.get("unscaled"), len(model.classes_))
        return model

    def _network(self, n_members: int) -> ResidualNetwork | EnsembleNetwork:
        """The chosen arm's network, or an ensemble of ``n_members`` of them."""
        if n_members == 1:
            return self._build(self.chosen_arm_)
        return EnsembleNetwork([self._build(self.chosen_arm_) for _ in range(n_members)])


def _unscaled(chosen: str, fits: dict, share: float | None) -> dict | None:
    """Each linear head's out-of-fold logit scale and the bias without it (see ``raw``)."""
    scale = {a: f.scale for a, f in fits.items()}
    if chosen == "refine":
        p, s = fits["linear-probe"], fits["scratch"]
        bias = share * p.intercept / p.scale + (1 - share) * s.intercept / s.scale
        return {
            "head_source": scale["linear-probe"],
            "head_residual": scale["scratch"],
            "bias": bias.tolist(),
        }
    head = "head_source" if chosen == "linear-probe" else "head_residual"
    return {head: scale[chosen], "bias": (fits[chosen].intercept / scale[chosen]).tolist()}


def _read_unscaled(d, n_classes: int) -> dict | None:
    """:func:`_unscaled`'s saved form, or None when absent or malformed."""
    try:
        out = {k: float(d[k]) for k in ("head_source", "head_residual") if d.get(k) is not None}
        bias = [float(b) for b in d["bias"]]
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
    ok = (
        len(bias) == n_classes
        and all(np.isfinite(bias))
        and all(np.isfinite(v) and v > 0 for v in out.values())
    )
    return {**out, "bias": bias} if ok and out else None
