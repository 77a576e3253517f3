"""``scresidual stress-test {image,text,tabular}``: run the stress protocol, write JSON."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .._errors import ScResidualError
from .._io import atomic_path
from ..module import ARMS
from ._protocol import SETTINGS, results_table, run_task

logger = logging.getLogger(__name__)

MODALITIES = ("image", "text", "tabular")
QUICK_SETTINGS = ("noise-0", "noise-0.8")


def _names(value: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ScResidualError(f"unknown {what} {bad or value!r}; choose from {', '.join(allowed)}.")
    return names


def parser() -> argparse.ArgumentParser:
    """Argument parser of ``stress-test``."""
    p = argparse.ArgumentParser(
        prog="scresidual stress-test",
        description="Compare REFINE with its baselines under corrupted or mismatched sources.",
    )
    p.add_argument("modality", choices=MODALITIES)
    p.add_argument("--data-dir", required=True, help="folder with the modality's data files")
    p.add_argument("--out", required=True, help="JSON file for the result records")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small splits, short training, no cross-fitting, settings " + ",".join(QUICK_SETTINGS),
    )
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; quick 1)")
    p.add_argument("--settings", default=None, help=f"comma list from {','.join(SETTINGS)}")
    p.add_argument("--arms", default=",".join(ARMS), help="comma list of arms")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished (setting, seed) runs already in --out, run the rest",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these small models gain little from more)",
    )
    return p


def run(
    modality: str,
    data_dir: str,
    *,
    quick: bool = False,
    seeds: int | None = None,
    settings: Sequence[str] | None = None,
    arms: Sequence[str] = ARMS,
    out: str | None = None,
    resume: bool = False,
) -> list[dict]:
    """Run the stress test of one modality; write the records to ``out`` after each arm.

    Parameters
    ----------
    modality
        ``"image"``, ``"text"`` or ``"tabular"``.
    data_dir
        Folder with the data files.
    quick
        Small splits, short training, one validation split (no cross-fitting), two
        settings.
    seeds
        Number of seeds (``0 … seeds - 1``); default 3, or 1 with ``quick``.
    settings, arms
        Subsets to run (default: all; quick: :data:`QUICK_SETTINGS`).
    out
        JSON file written atomically with every record so far.
    resume
        Keep the records already in ``out`` and skip each (data set, setting, seed) they
        cover for every arm in ``arms``; the rest is run and added. For long runs that were
        interrupted: the kept records must come from the same code and options.

    Returns
    -------
    The records.

    """
    if modality not in MODALITIES:
        raise ScResidualError(
            f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}."
        )
    n_seeds = seeds if seeds is not None else (1 if quick else 3)
    if n_seeds < 1:
        raise ScResidualError(f"--seeds must be at least 1, got {n_seeds}.")
    settings = list(settings or (QUICK_SETTINGS if quick else SETTINGS))
    pipeline = importlib.import_module(f"scresidual.{modality}._pipeline")
    records = _finished_records(out, arms) if resume and out is not None else []
    done = {(r["dataset"], r["setting"], r["seed"]) for r in records}
    if done:
        logger.info("resuming: %d (data set, setting, seed) already in %s", len(done), out)

    def save(rec: dict) -> None:
        records.append(rec)
        if out is not None:
            with atomic_path(out) as tmp:
                tmp.write_text(json.dumps(records, indent=1))

    for task in pipeline.stress_tasks(data_dir, quick=quick):
        run_task(
            task, settings=settings, arms=arms, seeds=range(n_seeds), on_record=save, done=done
        )
    return records


def _finished_records(out: str, arms: Sequence[str]) -> list[dict]:
    """Records of ``out`` whose (data set, setting, seed) has every arm of ``arms``."""
    path = Path(out)
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
        keys = [(r["dataset"], r["setting"], int(r["seed"]), r["arm"]) for r in records]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as err:
        raise ScResidualError(
            f"cannot resume from {out}: not a stress-test result file ({err}); "
            "pass another --out or drop --resume."
        ) from err
    arms_of: dict[tuple, set] = {}
    for *key, arm in keys:
        arms_of.setdefault(tuple(key), set()).add(arm)
    complete = {k for k, have in arms_of.items() if set(arms) <= have}
    return [r for r, k in zip(records, keys, strict=True) if k[:3] in complete and k[3] in arms]


def main_stress_test(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scresidual stress-test``; returns the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, args.threads))
    try:
        settings = None if args.settings is None else _names(args.settings, SETTINGS, "setting")
        records = run(
            args.modality,
            args.data_dir,
            quick=args.quick,
            seeds=args.seeds,
            settings=settings,
            arms=_names(args.arms, ARMS, "arm"),
            out=args.out,
            resume=args.resume,
        )
    except ScResidualError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(results_table(records))
    return 0
