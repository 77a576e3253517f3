"""The gradient engine (``solver="adam"``): every arm trained by Adam through Lightning.

Each arm is a :class:`scresidual.module.ResidualNetwork` trained with early stopping on one
validation split, or cross-fitted: with ``k`` folds every arm is trained ``k`` times, each
early-stopped on one fold and trained on the rest, the folds in joblib worker processes
(:func:`scresidual._process.worker_map`); the guard then compares out-of-fold losses on every
labelled cell, and the fitted model averages the ``k`` members' probabilities
(:class:`scresidual.module.EnsembleNetwork`). REFINE (with linear heads) starts from the
fitted linear probe and scratch model of its split, mixed at the source share chosen by the
rule both engines share (:func:`._selection.choose_share`), then trains jointly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .._process import worker_map
from .._settings import settings
from ..module import ENCODERS, EnsembleNetwork, ResidualNetwork, arm_uses, build_encoder
from ..train import ViewsDataset, batch_loader, seed_all
from ._selection import (
    SOURCE_SHARES,
    EngineFit,
    choose_share,
    guard,
    log_softmax,
    n_folds,
    splits,
    temperature,
    weighted_losses,
)

logger = logging.getLogger(__name__)

NO_CROSS_FIT = (
    "the model was fitted on one validation split, without cross-fitting, so it has no "
    "out-of-fold predictions of every labelled cell to calibrate on: refit it with folds=5 "
    "(CLI --folds 5) for calibrated probabilities and sets."
)


@dataclass
class GradientOptions:
    """Options read by the gradient engine alone.

    Attributes
    ----------
    max_epochs, batch_size, patience, min_steps_per_epoch
        Most epochs per fit, cells per step, epochs without improvement before stopping, and
        the fewest optimiser steps per epoch (small data sets repeat their batches).
    lr, probe_lr
        Adam's learning rate; the linear probe's (the arm, and REFINE's starting point): a
        convex fit on standardised features converges in tens of epochs at 1e-2, where
        ``lr`` (1e-3) had often not converged after 200.
    weight_decay, source_weight_decay
        L2 penalties of the trainable weights and of the head's source block.
    source_dropout
        Dropout on the standardised source features while training.

    """

    max_epochs: int = 200
    lr: float = 1e-3
    probe_lr: float = 1e-2
    weight_decay: float = 1e-4
    source_weight_decay: float = 1e-2
    batch_size: int = 128
    patience: int = 20
    min_steps_per_epoch: int = 10
    source_dropout: float = 0.1


def build_network(model, arm: str) -> ResidualNetwork:
    """A new network of ``arm`` with ``model``'s views, classes and options."""
    cfg = model.config
    use_source, use_residual = arm_uses(arm)
    encoders = {}
    if use_residual:
        for name, (kind, kwargs) in cfg.residuals.items():
            shape = model.shapes_[name]
            n_in = int(np.prod(shape[:1])) if kind == "cnn" else int(np.prod(shape))
            encoders[name] = build_encoder(kind, n_in, **kwargs)
    return ResidualNetwork(
        arm=arm,
        source_shapes={k: model.shapes_[k] for k in cfg.sources},
        residual_shapes={k: model.shapes_[k] for k in cfg.residuals},
        encoders=encoders,
        n_classes=len(model.classes_),
        head=cfg.head,
        source_dropout=model.options.source_dropout,
        teacher=cfg.teacher,
        kd_alpha=cfg.kd_alpha,
        kd_temperature=cfg.kd_temperature,
        source_head=model.aligned_source_head() if arm == "lora" else None,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
    )


@torch.no_grad()
def network_logits(net, tensors: Mapping[str, torch.Tensor], batch_size: int = 8192):
    """Logits of ``net`` in evaluation mode (its training mode is restored after)."""
    training = net.training
    net.eval()
    loader = batch_loader(ViewsDataset(tensors), batch_size=batch_size, shuffle=False)
    logits = torch.cat([net(b["views"]) for b in loader])
    net.train(training)  # scoring a starting point must not switch dropout off for training
    return logits


def _log_proba(net, tensors) -> np.ndarray:
    return log_softmax(network_logits(net, tensors).double().numpy())


def n_jobs(config, trainer_kwargs: dict, n_tasks: int) -> int:
    """Worker processes for the folds: ``n_jobs``, else one per CPU when training on CPU."""
    jobs = settings.n_jobs if config.n_jobs is None else config.n_jobs
    if jobs is None:
        kw = trainer_kwargs
        cpu = kw["accelerator"] == "cpu" or (
            kw["accelerator"] == "auto"
            and not torch.cuda.is_available()
            and not torch.backends.mps.is_available()
        )
        single = kw["strategy"] == "auto" and kw["devices"] in ("auto", 1)
        available = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        )
        jobs = (available or 1) if cpu and single else 1  # GPUs and DDP fit folds in turn
    return max(1, min(int(jobs), n_tasks))


def fit_gradient(model, tensors, codes, labelled, weights, groups) -> EngineFit:
    """Fit every stage on each split by gradient descent; keep the guard's choice."""
    cfg = model.config
    y_t = torch.from_numpy(codes)
    # REFINE starts from a fitted linear probe and scratch model (see
    # ResidualNetwork.start_from); with the guard they are also its fallbacks.
    stages = [cfg.arm]
    if cfg.arm == "refine" and cfg.sources and cfg.residuals and cfg.head == "linear":
        stages = ["linear-probe", "scratch", "refine"]
    k = n_folds(cfg.folds, cfg.validation_size, len(labelled))
    parts = splits(
        labelled,
        codes[labelled],
        k=k,
        validation_size=cfg.validation_size,
        seed=cfg.seed,
        groups=groups,
    )
    jobs = n_jobs(cfg, model.trainer_kwargs, len(parts))
    if len(parts) > 1:
        logger.info(
            "%s: cross-fitting %d folds (%d in parallel)", "/".join(stages), len(parts), jobs
        )
    args = [(model, stages, tensors, y_t, tr, va, weights) for tr, va in parts]
    if jobs > 1:  # folds are independent: one worker process (one CPU) each
        kinds = {kind: ENCODERS[kind] for kind, _ in cfg.residuals.values() if kind in ENCODERS}
        states = worker_map(
            _fit_fold_in_worker,
            [(*a, kinds) for a in args],
            jobs,
            desc="cross-fitted folds",
            progress=model.progress,
        )
        fits = [[(arm, _rebuild(model, arm, s), *rest) for arm, s, *rest in f] for f in states]
    else:
        fits = [_fit_fold(*a) for a in args]
    members, reports, (losses, preds, probas) = _out_of_fold(
        model, stages, parts, fits, tensors, codes, labelled, weights
    )
    validated = ~np.isnan(losses[stages[0]])
    y_val = codes[labelled][validated]
    val = {a: (losses[a][validated], preds[a][validated]) for a in stages}
    chosen, report = guard(
        cfg.arm,
        stages,
        reports,
        val if validated.any() else None,
        y_val,
        on=cfg.guard,
        guard_z=cfg.guard_z,
    )
    nets = members[chosen]
    network = (nets[0] if len(nets) == 1 else EnsembleNetwork(nets)).eval()
    if len(parts) > 1:  # cross-fitted: every labelled cell was predicted out of fold
        return EngineFit(network, chosen, report, labelled[validated], probas[chosen][validated])
    return EngineFit(network, chosen, report, np.array([], dtype=np.int64), None, NO_CROSS_FIT)


def _out_of_fold(model, stages, parts, fits, tensors, codes, labelled, weights):
    """Members and reports per stage, and per labelled cell its validation results.

    Loss, prediction and probabilities, one slot per labelled cell (out of fold when
    cross-fitted: every labelled cell is validated once).
    """
    n_classes = len(model.classes_)
    members = {arm: [] for arm in stages}
    epochs = {arm: [] for arm in stages}
    shares = {arm: [] for arm in stages}
    losses = {arm: np.full(len(labelled), np.nan) for arm in stages}
    preds = {arm: np.full(len(labelled), -1) for arm in stages}
    probas = {arm: np.zeros((len(labelled), n_classes)) for arm in stages}
    w = None if weights is None else weights.numpy().astype(np.float64)
    for (_, val_idx), fold_fits in zip(parts, fits, strict=True):
        for arm, net, best_epoch, share in fold_fits:
            members[arm].append(net)
            epochs[arm].append(best_epoch)
            shares[arm].append(share)
            if not len(val_idx):
                continue
            lp = _log_proba(net, {k: t[val_idx] for k, t in tensors.items()})
            slot = np.searchsorted(labelled, val_idx)
            losses[arm][slot] = weighted_losses(lp, codes[val_idx], w)
            preds[arm][slot] = lp.argmax(1)
            probas[arm][slot] = np.exp(lp)
    reports = {}
    for arm in stages:
        reports[arm] = {"best_epochs": epochs[arm], "n_members": len(members[arm])}
        if any(x is not None for x in shares[arm]):
            reports[arm]["source_shares"] = shares[arm]
    return members, reports, (losses, preds, probas)


def _fit_fold_in_worker(model, *args) -> list:
    """:func:`_fit_fold` in a worker process, returning state dicts instead of networks.

    A network may not pickle (an encoder class defined in a notebook cell), its weights
    always do. The last argument: the registered encoders, for a fresh worker.
    """
    *args, encoders = args
    torch.set_num_threads(1)  # one CPU per worker
    model.progress = False  # bars from several processes would interleave
    ENCODERS.update(encoders)
    return [(arm, net.state_dict(), *rest) for arm, net, *rest in _fit_fold(model, *args)]


def _rebuild(model, arm: str, state: dict) -> ResidualNetwork:
    net = build_network(model, arm)
    net.load_state_dict(state)
    return net


def _fit_fold(model, stages, tensors, y_t, train_idx, val_idx, weights):
    """Fit the stages on one split: ``[(arm, network, best epoch, source share), ...]``."""
    fitted, out = {}, []
    for arm in stages:
        net, best_epoch, share = _fit_stage(
            model, arm, tensors, y_t, train_idx, val_idx, weights, fitted
        )
        fitted[arm] = net
        out.append((arm, net, best_epoch, share))
    return out


def _starting_share(model, fitted, tensors, y_t, val_idx, weights) -> tuple[float, float, float]:
    """REFINE's source share and the two branches' temperatures, on the validation rows.

    The rule of both engines (:func:`._selection.choose_share`): each branch's
    log-probabilities are temperature-scaled on the validation cells, then the share whose
    mixture has the least weighted loss is kept. Without validation (or with one share
    offered): share 0.5 (or that one), temperatures 1.

    The gradient engine used to score raw summed logits instead; measured against that
    (hops encoder, 10% labels, seeds 0-2, cross-fitted), the shared rule gave REFINE a lower
    validation loss in all 6 fits, macro-F1 on the hidden cells STARmap .841 -> .832 (seed
    sd .03) and lymph node A1+D1 .606 -> .612 (sd .011): no reason for a rule of its own.
    """
    cfg = model.config
    shares = SOURCE_SHARES["adam"] if cfg.source_shares is None else tuple(cfg.source_shares)
    if not len(val_idx) or len(shares) < 2:
        return (0.5 if len(shares) != 1 else float(shares[0])), 1.0, 1.0
    val = {k: t[val_idx] for k, t in tensors.items()}
    y = y_t[val_idx].numpy()
    w = None if weights is None else weights.numpy().astype(np.float64)
    probe, scratch = _log_proba(fitted["linear-probe"], val), _log_proba(fitted["scratch"], val)
    tp, ts = temperature(probe, y, w), temperature(scratch, y, w)
    share, _ = choose_share(log_softmax(tp * probe), log_softmax(ts * scratch), y, w, shares)
    return share, tp, ts


def _fit_stage(model, arm, tensors, y_t, train_idx, val_idx, weights, fitted):
    """Fit one arm on one split; ``fitted`` holds this split's earlier stages."""
    from ..train import train_network  # imports Lightning: only when fitting

    cfg, options = model.config, model.options
    seed_all(cfg.seed)
    net = build_network(model, arm)
    net.fit_normalisation(tensors, model._fit_moments)
    started = (
        arm == "refine"
        and len(fitted) == 2
        and net.start_from(fitted["linear-probe"], fitted["scratch"])
    )
    share = None
    if started:
        # A harmful source starts down-weighted, an informative one up-weighted.
        share, tp, ts = _starting_share(model, fitted, tensors, y_t, val_idx, weights)
        net.start_from(fitted["linear-probe"], fitted["scratch"], share, scales=(tp, ts))
    result = train_network(
        net,
        tensors,
        y_t,
        train_idx,
        val_idx,
        max_epochs=options.max_epochs,
        batch_size=options.batch_size,
        lr=options.probe_lr if arm == "linear-probe" else options.lr,
        weight_decay=options.weight_decay,
        source_weight_decay=options.source_weight_decay,
        patience=options.patience,
        min_steps_per_epoch=options.min_steps_per_epoch,
        keep_start=started,
        class_weights=weights,
        seed=cfg.seed,
        progress=model.progress,
        **model.trainer_kwargs,
    )
    return net, result.best_epoch, share
