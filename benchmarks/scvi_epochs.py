"""Benchmark: how many scVI epochs a frozen source needs (macro-F1 of REFINE against epochs).

For each ``max_epochs``, pretrains an SCVI source on the slide's own counts
(``sr.sources.pretrain_scvi``, early stopping on), fits REFINE (the default linear encoder)
with 10% random labels and scores the hidden spots; 3 label seeds per source. Records the
epochs actually trained (early stopping) and the pretraining wall time.

Run: ``OMP_NUM_THREADS=1 python benchmarks/scvi_epochs.py`` (results in
``benchmarks/results/scvi_epochs.json``; about 10 min on 2 cores for STARmap).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import data_dir, load, metrics, quiet, split_random, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class _Epochs(logging.Handler):
    """Keeps the last 'scVI trained for N of M epochs' line that pretrain_scvi logs."""

    message = ""

    def emit(self, record: logging.LogRecord) -> None:
        if "scVI trained" in record.getMessage():
            self.message = record.getMessage()


def main() -> None:
    import scresidual as sr

    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dataset", default="starmap")
    p.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    quiet()
    handler = _Epochs()
    logging.getLogger("scresidual").addHandler(handler)
    logging.getLogger("scresidual").setLevel(logging.INFO)
    slide = load(args.dataset, data_dir(args.data_dir))
    work = Path(tempfile.mkdtemp())
    rows = []
    for epochs in args.epochs:
        t = time.perf_counter()
        source = sr.sources.pretrain_scvi(
            slide, work / f"scvi_{epochs}", max_epochs=epochs, seed=0, progress=False
        )
        seconds = time.perf_counter() - t
        sr.sources.embed(slide, source, key_added="X_scvi", progress=False)
        scores = []
        for seed in range(args.seeds):
            a = slide.copy()
            mask = split_random(a, 0.1, seed)
            a.obs["labels"] = a.obs["truth"].astype(object).where(mask)
            sr.model.SpatialRegionClassifier.setup_anndata(
                a, labels_key="labels", sources=["obsm:X_scvi"], features=["pca"]
            )
            model = sr.model.SpatialRegionClassifier(a, seed=seed)
            model.train(progress=False)
            model.predict(a)
            scores.append(metrics(a.obs["truth"][~mask], a.obs["labels_pred"][~mask])["macro_f1"])
        row = {
            "max_epochs": epochs,
            "trained": handler.message,
            "pretrain_seconds": round(seconds, 1),
            "macro_f1": [round(s, 4) for s in scores],
            "macro_f1_mean": round(float(np.mean(scores)), 4),
        }
        print(row, flush=True)
        rows.append(row)
    write_json(RESULTS / "scvi_epochs.json", {"dataset": args.dataset, "rows": rows})


if __name__ == "__main__":
    main()
