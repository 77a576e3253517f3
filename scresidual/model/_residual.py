"""The modality-agnostic REFINE classifier over named input views.

A *view* is one array with cells (samples) on the first axis: the features of a frozen
source, or the input of a residual encoder (flat features, graph hops, images, token
counts…). Pipelines for each modality turn their data into views; :class:`ResidualModel`
reads them, and delegates the fit to one of two engines: the exact engine
(``solver="newton-cg"``, :mod:`._exact`: the linear arms as cross-validated logistic
regressions) or the gradient engine (``solver="adam"``, :mod:`._gradient`: every arm trained
by Adam through Lightning). Both choose folds, REFINE's source share and the guard's fallback
with :mod:`._selection`; :mod:`._persistence` saves and loads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight

from .._docs import doc_params, doc_progress
from .._errors import ScResidualError
from .._io import atomic_path, check_model_dir
from .._settings import settings
from .._validate import labelled_mask, warn_placeholder_labels
from ..module import arm_uses
from ..train import as_tensor
from . import _persistence
from ._calibration import Calibration, calibrate
from ._config import ResidualConfig, check_side_blocks, check_trainer_kwargs, split_options
from ._exact import ExactHead, fit_exact
from ._gradient import fit_gradient, network_logits
from ._selection import fold_groups, n_folds

logger = logging.getLogger(__name__)

ENGINES = {"newton-cg": fit_exact, "adam": fit_gradient}


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
        ``{{view name: (encoder name, encoder kwargs)}}`` for the trainable residual
        encoders (see :data:`scresidual.module.ENCODERS`).
    side_blocks
        Source or residual views fitted as a block of their own, which joins the other views
        of its branch (the probe's sources, scratch's residuals) with the weight of least
        out-of-fold loss: 0, the block refused, when it does not help
        (:func:`._selection.choose_share`, the rule of the source share). The exact engine
        only. The spatial model's ``gradients=True`` puts the neighbour gradients here.
    head
        ``"linear"`` (default, robust) or ``"mlp"``.
    guard
        For ``refine``: fall back to ``scratch`` or to the linear probe (both are fitted
        anyway, as REFINE's parts) when their per-cell validation losses are lower than
        REFINE's by more than ``guard_z`` standard errors (a paired comparison), so the
        fitted model is not worse than ignoring the source beyond validation noise. What was
        chosen and why is in :attr:`chosen_arm_` and :attr:`guard_report_`.
    seed
        Seed for initialisation, data splits and batch order (default
        :attr:`scresidual.settings.seed`).
    accelerator, devices, strategy
        Passed to :class:`lightning.pytorch.Trainer` by the gradient engine; the exact
        engine fits on the CPU and refuses any other device.
    progress
        {doc_progress}
    source_head
        For ``lora``: ``{{"weight": (n_classes, n_features), "bias": (n_classes,)}}``, the
        frozen source's last linear layer (saved with the model; not needed by :meth:`load`).
    source_classes
        Class labels of the rows of ``source_head`` and of the teacher's logit columns, in
        order; they are reordered to :attr:`classes_`. Default: already in that order.
    **config
        Options of :class:`ResidualConfig` (both engines) and of the chosen engine, below.
        An option of the other engine is a one-line error.

    Other Parameters
    ----------------
    solver
        ``"adam"`` (default): the gradient engine; every arm trained by Adam with early
        stopping (options: :class:`._gradient.GradientOptions`: ``max_epochs``, ``lr``,
        ``probe_lr``, ``weight_decay``, ``source_weight_decay``, ``batch_size``,
        ``patience``, ``min_steps_per_epoch``, ``source_dropout``). ``"newton-cg"``: the
        exact engine, linear arms only (``refine``, ``scratch``, ``linear-probe`` with
        ``linear`` residual encoders and head), fitted as logistic regressions by sklearn's
        ``newton-cg`` with cross-validated penalties (option: ``cv_repeats``, rounds of
        cross-validation, ``None``: 3 below 1,000 labelled cells, else 1). ``"lbfgs"``, the
        exact engine's former name, still reads as ``"newton-cg"``.
    folds
        Both engines. Exact: ``folds``-fold cross-validation (``None``: 5) chooses each
        block's penalties, REFINE's share and the guard's arm, then every labelled cell is
        refitted. Gradient: cross-fitting; with ``k`` folds every arm is trained ``k`` times,
        each early-stopped on one fold and trained on the rest, the guard compares
        out-of-fold losses on every labelled cell and the model averages the ``k`` members'
        probabilities (``None``: 5 folds below 1,000 labelled cells, else one
        ``validation_size`` split, none with ``validation_size=0``). ``folds=1``: one
        ``validation_size`` split, for both.
    validation_size
        Both engines: the share of labelled cells validated on when ``folds`` is 1.
    group_folds
        Both engines: when :meth:`fit` is given ``groups`` (the slide of each cell) and the
        labelled cells span two or more, whether folds hold out whole groups (at most
        ``folds`` of them; leave-one-slide-out for a few slides). Folds should be drawn as the
        model will be used. A model fitted on fully labelled slides is for other slides, and
        folds drawn within slides cannot see that shift (BaristaSeq slices 1-2 → 3: macro-F1
        .82 left-one-slide-out against .76); a model fitted on partly labelled slides is for
        their unlabelled cells, and leaving slides out then chooses worse (BaristaSeq,
        annotated half of each slice: .61 against .65). ``"auto"`` (default): hold out
        slides when at least 95% of the cells are labelled; ``True``/``False``: always/never.
    source_shares
        Both engines: the source shares ``s`` tried for REFINE, whose logits are ``s`` times
        the linear probe's plus ``1 - s`` times scratch's, each branch temperature-scaled;
        the share of least validation loss is kept (:func:`._selection.choose_share`). The
        exact model is that mixture; the gradient engine starts there and trains jointly.
        ``None``: :data:`._selection.SOURCE_SHARES` of the solver.
    guard_z, class_weight
        Both engines: the guard's threshold in standard errors (default 1) and the class
        weights of the losses (``"balanced"`` or ``None``).
    n_jobs
        Both engines: worker processes (joblib's loky) for the folds; the result does not
        depend on it. ``None``: :attr:`scresidual.settings.n_jobs` if set, else for the
        gradient engine one per available CPU when training on one CPU device (GPUs and DDP
        fit folds in turn), for the exact engine 1 (its fits take seconds; workers take
        about a second each to start).

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
        config, self.options = split_options(config)
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
        check_side_blocks(self.config)
        self.trainer_kwargs = {"accelerator": accelerator, "devices": devices, "strategy": strategy}
        check_trainer_kwargs(self.config.solver, self.trainer_kwargs)
        self.progress = progress
        self.source_head = source_head
        self.source_classes = None if source_classes is None else [str(c) for c in source_classes]
        self.predictor_ = None  # the fitted network (gradient) or ExactHead (exact)
        self.classes_: list[str] = []
        self.shapes_: dict[str, tuple[int, ...]] = {}
        self.chosen_arm_: str | None = None
        self.guard_report_: dict[str, dict] = {}
        self.oof_rows_: np.ndarray | None = None  # labelled rows predicted out of fold
        self._fit_moments: dict | None = None  # standardisation given to the running fit()
        self.oof_proba_: np.ndarray | None = None  # … and their out-of-fold probabilities
        self.calibration_: Calibration | None = None  # fitted on them (see _calibration)
        self.calibration_note_: str | None = None  # why there is none

    @property
    def view_names(self) -> list[str]:
        """Views this model reads."""
        return [*self.config.sources, *self.config.residuals]

    @property
    def network(self):
        """The fitted network of the gradient engine (None for an exact fit or unfitted)."""
        return None if isinstance(self.predictor_, ExactHead) else self.predictor_

    def n_folds(self, n_labelled: int) -> int:
        """Folds the gradient engine cross-fits for ``n_labelled`` labelled cells (1: a split)."""
        return n_folds(self.config.folds, self.config.validation_size, n_labelled)

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

    def aligned_source_head(self) -> dict | None:
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
    def fit(
        self, views: Mapping[str, np.ndarray], y, *, groups=None, moments: dict | None = None
    ) -> ResidualModel:
        """Fit on the labelled rows of ``y`` (NaN/None/'' marks an unlabelled row).

        Unlabelled rows are never fitted on, but set the standardisation statistics of the
        inputs. ``groups`` (one value per row, e.g. the slide) makes validation folds hold
        out whole groups (see ``group_folds``). ``moments``: per view ``(mean, std)`` (per
        column, ``std`` with one degree of freedom) used as the standardisation instead, for
        inputs given for the labelled rows only and summed up elsewhere over every row (as
        :func:`scresidual.model.train_tiled` does, tile by tile).
        """
        self._fit_moments = moments
        try:
            return self._fit(views, y, groups=groups)
        finally:
            self._fit_moments = None

    def _fit(self, views: Mapping[str, np.ndarray], y, *, groups) -> ResidualModel:
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
            # float32, as the gradient engine's loss reads them (and the exact one, alike)
            weights = torch.tensor(
                compute_class_weight(
                    "balanced", classes=np.arange(len(self.classes_)), y=codes[labelled]
                ),
                dtype=torch.float32,
            )
        groups = fold_groups(cfg.group_folds, groups, labelled, len(y))
        fit = ENGINES[cfg.solver](self, tensors, codes, labelled, weights, groups)
        self.predictor_, self.chosen_arm_, self.guard_report_ = (
            fit.predictor,
            fit.chosen_arm,
            fit.guard_report,
        )
        self.oof_rows_ = fit.oof_rows
        self.oof_proba_ = (
            fit.oof_proba if fit.oof_proba is not None else np.zeros((0, len(self.classes_)))
        )
        if fit.note is not None:
            self.calibration_, self.calibration_note_ = None, fit.note
        else:
            self.calibration_, self.calibration_note_ = calibrate(self, codes[self.oof_rows_])
        return self

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
        if len(self.classes_) < 2:
            raise ScResidualError(
                f"need labels of at least 2 classes to train, found {len(self.classes_)} "
                f"among {int(mask.sum())} labelled cells; label more cells or check labels_key."
            )
        codes = np.full(len(y), -1, dtype=np.int64)
        codes[mask] = pd.Categorical(labels, categories=self.classes_).codes
        return codes

    # ------------------------------------------------------------------ prediction
    def predict_proba(self, views: Mapping[str, np.ndarray], *, raw: bool = False) -> np.ndarray:
        """Class probabilities, columns in the order of :attr:`classes_`.

        ``raw``: of an exact fit, the logistic regressions' own probabilities, without each
        block's out-of-fold temperature (the uncalibrated baseline); a network of the
        gradient engine has no such temperature and gives the same either way.
        """
        if self.predictor_ is None:
            raise ScResidualError("the model is not fitted yet; call fit() or load() first.")
        tensors = self._tensors(views)
        if isinstance(self.predictor_, ExactHead):
            logits = self.predictor_.logits(tensors, raw=raw)
        else:
            logits = network_logits(self.predictor_, tensors)
        return torch.softmax(logits, 1).numpy()

    def predict(self, views: Mapping[str, np.ndarray]) -> np.ndarray:
        """Predicted class labels."""
        return np.asarray(self.classes_, dtype=object)[self.predict_proba(views).argmax(1)]

    # ------------------------------------------------------------------ saving
    def write(self, directory: Path) -> None:
        """Write the model's files into an existing directory (not atomic; see :meth:`save`)."""
        if self.predictor_ is None:
            raise ScResidualError("the model is not fitted yet; call fit() or load() first.")
        _persistence.write(self, directory)

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
        return _persistence.load(cls, path, progress=progress, **trainer_kwargs)
