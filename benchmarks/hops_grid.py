"""Benchmark: the neural residual encoder (``encoder="hops"``) against the exact linear fit.

The fixed grid of issue 24, REFINE (``arm="refine"``, the frozen scVI source of
``spatial_regions.py``, guarded) with each encoder on the same splits:

* ``random1`` / ``random10`` / ``random50``: 1%, 10% and 50% of the cells labelled at random
  (at least one per class), scored on the rest;
* ``half``: the annotated half of ``spatial_regions.py`` (each slide's half with the most alike
  region mix labelled, the other half scored);
* ``cross-slide``: BaristaSeq slices 1-2 → 3, lymph node A1 → D1;
* ``generated``: a generated 10^5-cell slide (``scale.py``'s generator, 10% labelled, PCA
  features, no source, ``arm="scratch"``: there is no source to refine).

Per case: macro-F1 per seed and its mean for both encoders, the paired difference
``hops - linear`` (mean and its seed-to-seed spread) and the wall seconds of fit + predict
(the gradient engine trains in worker processes, whose CPU time a parent does not see until
they exit).

Usage::

    python benchmarks/hops_grid.py                          # everything, seeds 0 1 2
    python benchmarks/hops_grid.py --datasets dlpfc --protocols random10 --seeds 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402
import spatial_regions as sreg  # noqa: E402

ENCODERS = ("linear", "hops")
FRACTIONS = {"random1": 0.01, "random10": 0.10, "random50": 0.50}
PROTOCOLS = (*FRACTIONS, "half", "cross-slide")
GENERATED_CELLS = 100_000


def split(a, name: str, protocol: str, seed: int):
    """``(train, test, scored mask)`` of a protocol (``spatial_regions.split``'s, plus the
    fractions)."""
    if protocol not in FRACTIONS:
        train, test, mask, _ = sreg.split(a, name, protocol, seed)
        return train, test, mask
    m = bc.split_random(a, FRACTIONS[protocol], seed)
    train = a.copy()
    train.obs["y"] = np.where(m, a.obs["truth"].to_numpy(dtype=object), None)
    return train, a, ~m


def fit_score(train, test, mask, *, encoder, library, seed, sources, arm, features=("pca",)):
    """Macro-F1 on the scored cells and wall seconds of one fit + predict."""
    from scresidual.tl import fit_regions

    t = time.perf_counter()
    clf = fit_regions(
        train,
        labels_key="y",
        sources=list(sources),
        features=list(features),
        library_key=library,
        arm=arm,
        encoder=encoder,
        seed=seed,
        progress=False,
    )
    P = clf.predict_proba(test).to_numpy()
    pred = np.asarray(clf.classes_, dtype=object)[P.argmax(1)]
    f1 = bc.metrics(test.obs["truth"].to_numpy()[mask], pred[mask])["macro_f1"]
    return {"macro_f1": f1, "wall_s": round(time.perf_counter() - t, 2), "chosen": clf.chosen_arm_}


def case_row(dataset: str, protocol: str, runs: list[dict]) -> dict:
    f1 = {e: np.array([r[e]["macro_f1"] for r in runs]) for e in ENCODERS}
    diff = f1["hops"] - f1["linear"]
    return {
        "dataset": dataset,
        "protocol": protocol,
        "macro_f1": {e: round(float(v.mean()), 4) for e, v in f1.items()},
        "hops_minus_linear": {
            "mean": round(float(diff.mean()), 4),
            "sd": round(float(diff.std()), 4),
        },
        "wall_s": {e: round(float(np.mean([r[e]["wall_s"] for r in runs])), 1) for e in ENCODERS},
        "runs": runs,
    }


def run_slides(args) -> list[dict]:
    ddir = bc.data_dir(args.data_dir)
    rows = []
    for name in args.datasets:
        a = bc.load(name, ddir)
        a.obsm["X_scVI"] = bc.scvi_source(a, name, epochs=args.pretrain_epochs, tag="_l10")
        library = bc.DATASETS[name]["library"]
        for protocol in args.protocols:
            if protocol == "cross-slide" and name not in sreg.CROSS:
                continue
            runs = []
            for seed in args.seeds:
                train, test, mask = split(a, name, protocol, seed)
                kw = {"library": library, "seed": seed, "sources": ["obsm:X_scVI"], "arm": "refine"}
                runs.append({e: fit_score(train, test, mask, encoder=e, **kw) for e in ENCODERS})
                print(
                    f"  {name}/{protocol} seed {seed}: "
                    + ", ".join(f"{e} {runs[-1][e]['macro_f1']:.3f}" for e in ENCODERS),
                    flush=True,
                )
            rows.append(case_row(name, protocol, runs))
    return rows


def run_generated(args) -> dict:
    from scale import make_slide

    runs = []
    for seed in args.seeds[:1]:  # one seed: a 10^5-cell fit per encoder
        a = make_slide(GENERATED_CELLS, seed=seed)
        a.obs["y"] = a.obs["region"].astype(object)
        scored = a.obs["y"].isna().to_numpy()
        kw = {"library": None, "seed": seed, "sources": [], "arm": "scratch"}
        runs.append({e: fit_score(a, a, scored, encoder=e, **kw) for e in ENCODERS})
        print("  generated: " + ", ".join(f"{e} {runs[-1][e]['macro_f1']:.3f}" for e in ENCODERS))
    return case_row(f"generated {GENERATED_CELLS:,}", "random10", runs)


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'slide':<19}{'protocol':<13}{'linear':>8}{'hops':>8}{'hops-lin':>10}{'± sd':>7}"
        f"{'s lin':>9}{'s hops':>9}"
    )
    for r in rows:
        d = r["hops_minus_linear"]
        print(
            f"{r['dataset']:<19}{r['protocol']:<13}{r['macro_f1']['linear']:>8.3f}"
            f"{r['macro_f1']['hops']:>8.3f}{d['mean']:>+10.3f}{d['sd']:>7.3f}"
            f"{r['wall_s']['linear']:>9.0f}{r['wall_s']['hops']:>9.0f}"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="*", default=list(bc.SPATIAL), choices=list(bc.SPATIAL))
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--no-generated", action="store_true", help="skip the generated 10^5 slide")
    p.add_argument("--data-dir", default=None, help="folder holding spatial/*.h5ad")
    p.add_argument("--pretrain-epochs", type=int, default=100, help="scVI source epochs")
    p.add_argument("--out", default=str(bc.RESULTS / "hops_grid.json"), help="JSON results")
    args = p.parse_args(argv)
    bc.quiet()
    t0 = time.time()
    rows = run_slides(args) if args.datasets else []
    if not args.no_generated:
        rows.append(run_generated(args))
    wins = [
        f"{r['dataset']}/{r['protocol']}" for r in rows if r["hops_minus_linear"]["mean"] > 0.01
    ]
    bc.write_json(
        Path(args.out),
        {
            "encoders": ENCODERS,
            "seeds": args.seeds,
            "rows": rows,
            "hops_ahead_by_more_than_0.01": wins,
            "seconds": round(time.time() - t0),
        },
    )
    print_table(rows)
    print(f"hops ahead of linear by > 0.01 in: {wins or 'no case'}; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
