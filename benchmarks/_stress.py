"""Shared wrapper of the stress benchmarks: run one modality, print the table, write JSON."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from scresidual.stress import results_table, run

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parent.parent / "shared" / "data"


def main(modality: str, subdir: str) -> None:
    p = argparse.ArgumentParser(description=f"REFINE stress test, {modality}")
    p.add_argument("--data-dir", default=str(DATA / subdir))
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--settings", default=None, help="comma list (default: all)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(ROOT / "results" / f"stress_{modality}.json"))
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished (setting, seed) runs already in --out",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    start = time.perf_counter()
    records = run(
        modality,
        args.data_dir,
        quick=args.quick,
        seeds=args.seeds,
        out=args.out,
        settings=None if args.settings is None else args.settings.split(","),
        resume=args.resume,
    )
    print(results_table(records))
    print(f"wrote {args.out} ({len(records)} records, {time.perf_counter() - start:.0f}s)")
