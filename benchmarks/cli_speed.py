"""Benchmark: wall time of ``scresidual fit`` + ``scresidual predict`` on a ~5,000-spot slide.

A generated lymph-node slide (``scresidual.datasets.lymph_node``, 1 slide, 80 spots a side,
about 5,000 spots) with 10% of the regions labelled (the default linear encoder then
validates by 3 rounds of 5-fold cross-validation, below 1,000 labels), and an SCVI source
pretrained beforehand on the dissociated reference (not timed: a lab downloads or pretrains
its source once). Times the two commands as a user runs them, in fresh processes (imports
included), default options, and the same with every spot labelled (one round of 5 folds).
``members`` is the number of networks saved (1 for the linear encoder; 5 for cross-fitted
gradient-descent encoders).

Run: ``python benchmarks/cli_speed.py`` (results in ``benchmarks/results/cli_speed.json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    import scresidual as sr

    work = Path(tempfile.mkdtemp())
    slide = sr.datasets.lymph_node(n_slides=1, seed=0, spots_per_side=80)
    ref = sr.datasets.lymph_node_reference(n_cells=3000, seed=0)
    sr.sources.pretrain_scvi(ref, work / "scvi", max_epochs=30, progress=False)
    rows = []
    for labelled in (0.1, 1.0):
        a = slide.copy()
        keep = np.random.default_rng(0).random(a.n_obs) < labelled
        a.obs["train"] = a.obs["region"].astype(object).where(keep, None)
        a.write_h5ad(work / "slide.h5ad")
        mdir = work / f"model_{labelled}"
        fit = timed(
            [
                sys.executable,
                "-m",
                "scresidual.cli",
                "fit",
                str(work / "slide.h5ad"),
                "--labels-key",
                "train",
                "--model-dir",
                str(mdir),
                "--source",
                f"scvi:{work / 'scvi'}",
                "--quiet",
            ]
        )
        pred = timed(
            [
                sys.executable,
                "-m",
                "scresidual.cli",
                "predict",
                str(mdir),
                str(work / "slide.h5ad"),
                "--output",
                str(work / "out.h5ad"),
                "--quiet",
            ]
        )
        meta = json.loads((mdir / "residual_model.json").read_text())
        rows.append(
            {
                "spots": a.n_obs,
                "labelled": int(keep.sum()),
                "members": meta["n_members"],
                "fit_s": round(fit, 1),
                "predict_s": round(pred, 1),
                "total_s": round(fit + pred, 1),
            }
        )
    print(
        f"{'spots':>6} {'labelled':>9} {'members':>8} {'fit s':>7} {'predict s':>10} {'total s':>8}"
    )
    for r in rows:
        print(
            f"{r['spots']:>6} {r['labelled']:>9} {r['members']:>8} {r['fit_s']:>7} "
            f"{r['predict_s']:>10} {r['total_s']:>8}"
        )
    write_json(RESULTS / "cli_speed.json", {"rows": rows})


if __name__ == "__main__":
    main()
