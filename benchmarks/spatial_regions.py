"""Benchmark: spatial region labelling with REFINE vs its arms and a neighbourhood baseline.

Datasets (``../shared/data/spatial``): STARmap, BaristaSeq (3 slices), DLPFC 151510 and the
lymph-node protein slide. Each gets a frozen source pretrained on its own values with no labels
and no coordinates (SCVI on counts; a denoising autoencoder on the 31 protein values), cached
under ``benchmarks/.cache/``. Protocols: ``random10`` (10% of cells labelled at random, scored
on the rest) and, for BaristaSeq, ``cross-slide`` (train on slices 1-2, predict slice 3).

Arms: scratch, linear-probe, adapter, refine without the guard, refine with the guard (the
default: falls back to scratch or the probe when they validate better beyond noise), the
baseline (neighbourhood-averaged own PCA + logistic regression on every labelled cell), and
the probe and refine with a *harmful* source (hidden features of an MLP fitted to labels with
80% flipped). Every arm uses the library defaults: below 1,000 labelled cells (each random-10%
protocol here) it is cross-fitted over 5 folds.

Usage::

    python benchmarks/spatial_regions.py                 # all datasets, seeds 0 1 2
    python benchmarks/spatial_regions.py --quick         # starmap, 1 seed, short training
    python benchmarks/spatial_regions.py --datasets starmap dlpfc --seeds 0 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402

ARMS = ["scratch", "linear-probe", "adapter", "refine-noguard", "refine", "baseline",
        "harmful:linear-probe", "harmful:refine-noguard", "harmful:refine"]
TOL = 0.01


def protocols(name: str) -> list[str]:
    """Protocols run on a dataset."""
    return ["random10", "cross-slide"] if name == "baristaseq" else ["random10"]


def splits(a, name: str, protocol: str, seed: int):
    """``(train, test, eval_mask)``; ``train.obs['y']`` holds the visible labels."""
    truth = a.obs["truth"].to_numpy(dtype=object)
    if protocol == "random10":
        m = bc.split_random(a, 0.10, seed)
        train = a.copy()
        train.obs["y"] = np.where(m, truth, None)
        return train, a, ~m
    lib = a.obs["slice"].astype(str)
    slices = sorted(lib.unique())
    tr = lib.isin(slices[:2]).to_numpy()
    train = a[tr].copy()
    train.obs["y"] = train.obs["truth"].to_numpy(dtype=object)
    test = a[~tr].copy()
    return train, test, np.ones(test.n_obs, dtype=bool)


def run_seed(a, name: str, protocol: str, seed: int, train_kw: dict) -> dict:
    """All arms for one dataset, protocol and seed."""
    cfg = bc.DATASETS[name]
    train, test, mask = splits(a, name, protocol, seed)
    common = dict(features=["pca"], graph=cfg["graph"], library=cfg["library"], seed=seed,
                  **train_kw)
    r = {}
    src, bad = ["obsm:X_source"], ["obsm:X_harmful"]
    r["scratch"] = bc.fit_arm(train, test, mask, arm="scratch", sources=[], **common)
    r["linear-probe"] = bc.fit_arm(train, test, mask, arm="linear-probe", sources=src, **common)
    r["adapter"] = bc.fit_arm(train, test, mask, arm="adapter", sources=src, **common)
    r["refine-noguard"] = bc.fit_arm(train, test, mask, arm="refine", sources=src, **common)
    r["refine"] = bc.fit_arm(train, test, mask, arm="refine", sources=src, guard=True, **common)
    r["baseline"] = bc.baseline(train, test, mask, graph=cfg["graph"], library=cfg["library"],
                                n_hops=2, seed=seed)
    r["harmful:linear-probe"] = bc.fit_arm(train, test, mask, arm="linear-probe", sources=bad,
                                           **common)
    r["harmful:refine-noguard"] = bc.fit_arm(train, test, mask, arm="refine", sources=bad,
                                             **common)
    r["harmful:refine"] = bc.fit_arm(train, test, mask, arm="refine", sources=bad, guard=True,
                                     **common)
    return r


def criteria(s: dict) -> dict:
    """Done-when checks on the seed means of macro-F1."""
    f = {k: s[k]["macro_f1"]["mean"] for k in s}
    return {
        "refine>=max(scratch,lp)-0.01": f["refine"] >= max(f["scratch"], f["linear-probe"]) - TOL,
        "refine>=baseline-0.01": f["refine"] >= f["baseline"] - TOL,
        "harmful:refine>=scratch-0.01": f["harmful:refine"] >= f["scratch"] - TOL,
    }


def print_table(rows: list[dict]) -> None:
    """One line per dataset/protocol/arm: accuracy and macro-F1 as mean±sd over seeds."""
    print(f"\n{'dataset':<11} {'protocol':<11} {'arm':<23} {'accuracy':>13} {'macro-F1':>13}  "
          "per-seed macro-F1 / guard choice")
    for row in rows:
        for arm in ARMS:
            s = row["summary"][arm]
            acc, f1 = s["accuracy"], s["macro_f1"]
            extra = " ".join(f"{x:.3f}" for x in f1["per_seed"])
            if "chosen" in s:
                extra += "  [" + ",".join(s["chosen"]) + "]"
            print(f"{row['dataset']:<11} {row['protocol']:<11} {arm:<23} "
                  f"{acc['mean']:.3f}±{acc['sd']:.3f}  {f1['mean']:.3f}±{f1['sd']:.3f}  {extra}")
        checks = "  ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in row["criteria"].items())
        print(f"{'':<11} {'':<11} criteria: {checks}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(bc.DATASETS), choices=list(bc.DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--quick", action="store_true",
                   help="starmap only (unless --datasets), seed 0, 60 epochs, short pretraining")
    p.add_argument("--data-dir", default=None, help="folder holding spatial/*.h5ad "
                   "(default ../shared/data relative to the repository root)")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--pretrain-epochs", type=int, default=60)
    p.add_argument("--out", default=str(bc.RESULTS / "spatial_regions.json"))
    p.add_argument("--option", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra ResidualConfig options, e.g. source_weight_decay=0.1")
    args = p.parse_args(argv)
    ddir = bc.data_dir(args.data_dir)
    bc.quiet()
    bc.apply_quick(args, argv, "starmap")
    train_kw = {"max_epochs": args.max_epochs}
    for kv in args.option:
        k, _, v = kv.partition("=")
        train_kw[k] = float(v) if "." in v or "e" in v else int(v)
    t0 = time.time()
    rows = []
    for name in args.datasets:
        t = time.time()
        a = bc.load(name, ddir)
        if bc.DATASETS[name]["kind"] == "counts":
            a.obsm["X_source"] = bc.scvi_source(a, name, epochs=args.pretrain_epochs)
        else:
            a.obsm["X_source"] = bc.ae_source(a, name, epochs=4 * args.pretrain_epochs,
                                              transform="plain-log1p")
        a.obsm["X_harmful"] = bc.harmful_source(a, name)
        print(f"[{name}] {a.n_obs} cells, {a.n_vars} features, sources ready in "
              f"{time.time() - t:.0f}s", flush=True)
        for protocol in protocols(name):
            runs = []
            for seed in args.seeds:
                ts = time.time()
                runs.append(run_seed(a, name, protocol, seed, train_kw))
                print(f"  {name}/{protocol} seed {seed}: "
                      + ", ".join(f"{k}={v['macro_f1']:.3f}" for k, v in runs[-1].items())
                      + f"  ({time.time() - ts:.0f}s)", flush=True)
            summary = {}
            for arm in ARMS:
                summary[arm] = bc.summarise([r[arm] for r in runs])
                if "chosen" in runs[0][arm]:
                    summary[arm]["chosen"] = [r[arm]["chosen"] for r in runs]
            row = {"dataset": name, "protocol": protocol, "seeds": args.seeds,
                   "summary": summary, "criteria": criteria(summary), "runs": runs}
            rows.append(row)
            bc.write_json(Path(args.out), {"rows": rows, "options": train_kw,
                                           "pretrain_epochs": args.pretrain_epochs,
                                           "seconds": round(time.time() - t0)})
    print_table(rows)
    print(f"total {time.time() - t0:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
