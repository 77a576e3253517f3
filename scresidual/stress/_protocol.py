"""The stress-test protocol shared by every modality.

A :class:`StressTask` holds one data set already turned into arrays: a source pool (what the
source model may be trained on), a small labelled target split and a test split, plus how
to pretrain a source model and which residual encoder to use. :func:`run_task` corrupts the
source pool per setting and seed, pretrains the source, runs it frozen once to make the
views, and fits every arm with :class:`~scresidual.model.ResidualModel`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from .._errors import ScResidualError
from .._task import StressTask
from ..model import ResidualModel
from ..module import ARMS, arm_uses
from ..sources import source_outputs
from ._corruptions import confuse_classes, domain_mismatch, flip_labels, imbalance_indices

logger = logging.getLogger(__name__)

SETTINGS = ("noise-0", "noise-0.8", "mismatch", "noise-0.4", "confusion", "imbalance")
"""Source corruptions: label flips at 0/40/80%, class confusion, imbalance, another data set."""

METRICS = ("accuracy", "roc_auc", "macro_f1")


def corrupt_source(task: StressTask, setting: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The source training split of ``setting`` (see :data:`SETTINGS`) for one seed."""
    x, y = task.source_x, task.source_y
    if setting.startswith("noise-"):
        return x, flip_labels(y, float(setting[6:]), n_classes=task.n_classes, seed=seed)
    if setting == "confusion":
        return confuse_classes(x, y, task.pairs, seed=seed)
    if setting == "imbalance":
        rows = imbalance_indices(y, seed=seed)
        return x[rows], y[rows]
    if setting == "mismatch":
        if task.other is None:
            raise ScResidualError(f"{task.dataset} has no second data set for 'mismatch'.")
        return domain_mismatch(*task.other, n=len(y), n_classes=task.n_classes, seed=seed)
    raise ScResidualError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}.")


def score(metric: str, y: np.ndarray, proba: np.ndarray) -> float:
    """``accuracy``, ``macro_f1`` or ``roc_auc`` (one-vs-rest when multiclass), as a fraction."""
    if metric == "accuracy":
        return float(accuracy_score(y, proba.argmax(1)))
    if metric == "macro_f1":
        return float(f1_score(y, proba.argmax(1), average="macro", zero_division=0))
    if metric == "roc_auc":
        if proba.shape[1] == 2:
            return float(roc_auc_score(y, proba[:, 1]))
        return float(roc_auc_score(y, proba, multi_class="ovr", labels=range(proba.shape[1])))
    raise ScResidualError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}.")


def fit_arm(
    task: StressTask, arm: str, views: dict, test_views: dict, head: dict, seed: int
) -> tuple[float, ResidualModel]:
    """Fit one arm on the target split and score it on the test split."""
    use_source, use_residual = arm_uses(arm)
    classes = [str(c) for c in range(task.n_classes)]
    model = ResidualModel(
        arm=arm,
        sources=["source"] if use_source else [],
        residuals={"x": task.encoder} if use_residual else {},
        teacher="teacher" if arm == "kd" else None,
        source_head=head if arm == "lora" else None,
        source_classes=classes,
        seed=seed,
        progress=False,
        **task.fit_options,
    )
    model.fit(views, task.target_y.astype(str))
    proba = np.zeros((len(task.test_y), task.n_classes))
    proba[:, [int(c) for c in model.classes_]] = model.predict_proba(test_views)
    return score(task.metric, task.test_y, proba), model


def run_task(
    task: StressTask,
    *,
    settings: Sequence[str] = SETTINGS,
    arms: Sequence[str] = ARMS,
    seeds: Sequence[int] = (0,),
    on_record: Callable[[dict], None] | None = None,
    done: Container[tuple[str, str, int]] = (),
) -> list[dict]:
    """Run every (setting, seed, arm) of one task; return the result records.

    ``done`` holds ``(dataset, setting, seed)`` triples already measured: they are skipped.
    """
    records = []
    for setting in settings:
        if setting == "mismatch" and task.other is None:
            logger.warning("%s: no second data set, skipping 'mismatch'.", task.dataset)
            continue
        for seed in seeds:
            if (task.dataset, setting, int(seed)) in done:
                continue
            start = time.perf_counter()
            source = task.pretrain(*corrupt_source(task, setting, seed), seed)
            feats, logits = source_outputs(source, task.target_x)
            test_feats, test_logits = source_outputs(source, task.test_x)
            views = {"source": feats, "teacher": logits, "x": task.target_r}
            test_views = {"source": test_feats, "teacher": test_logits, "x": task.test_r}
            for arm in arms:
                value, model = fit_arm(task, arm, views, test_views, source.head_weights(), seed)
                rec = {
                    "modality": task.modality,
                    "dataset": task.dataset,
                    "setting": setting,
                    "arm": arm,
                    "seed": int(seed),
                    "metric": task.metric,
                    "value": value,
                }
                records.append(rec)
                if on_record is not None:
                    on_record(rec)
                logger.info(
                    "%s %s seed=%d %s: %.4f (chosen %s)",
                    task.dataset,
                    setting,
                    seed,
                    arm,
                    value,
                    model.chosen_arm_,
                )
            logger.info(
                "%s %s seed=%d took %.0fs", task.dataset, setting, seed, time.perf_counter() - start
            )
    return records


def results_table(records: Sequence[dict]) -> str:
    """Mean (± sd over seeds) in percent, one row per data set and setting, one column per arm."""
    if not records:
        return "(no results)"
    df = pd.DataFrame(records)
    df["value"] *= 100
    g = df.groupby(["dataset", "metric", "setting", "arm"], sort=False)["value"]
    cell = g.mean().map("{:.1f}".format)
    if df["seed"].nunique() > 1:
        cell = cell + " ±" + g.std().fillna(0).map("{:.1f}".format)
    table = cell.unstack("arm")
    table = table[[a for a in ARMS if a in table.columns]]
    return table.to_string() + f"\n(seeds: {sorted(df['seed'].unique().tolist())})"
