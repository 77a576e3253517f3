"""Benchmark: REFINE with 1, 2 and 3 residual modalities / frozen sources on spatial slides.

Protocol: 10% of cells labelled at random, scored on the rest, 3 seeds. Per slide:

* lymph node (protein): source S1 = denoising autoencoder on the 31 protein values; residual R1
  = spatial graph hops over the protein PCA; residual R2 = graph hops over per-spot centred
  log protein values (CLR-like); second source S2 = an autoencoder on the CLR values (other seed,
  8 latent dimensions).
* STARmap (RNA): S1 = SCVI on counts; R1 = graph hops over expression PCA; R2 = graph hops over
  the log-normalised 50 most variable genes; S2 = an autoencoder on log-normalised expression.

Configurations: ``1``: S1 + R1; ``2``: S1 + R1 + R2; ``3``: S1 + S2 + R1 + R2; ``3-harmful``:
S1 + H + R1 + R2 where H is the harmful source (MLP fitted to 80%-flipped labels). Each is
compared with its source-only linear probe and its residual-only scratch model (same inputs).

Usage::

    python benchmarks/multimodal.py                  # lymph_node_d1 + starmap, seeds 0 1 2
    python benchmarks/multimodal.py --quick          # lymph_node_d1, seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402

SLIDES = ["lymph_node_d1", "starmap"]
CONFIGS = {
    "1": (["obsm:S1"], ["pca"]),
    "2": (["obsm:S1"], ["pca", "obsm:R2"]),
    "3": (["obsm:S1", "obsm:S2"], ["pca", "obsm:R2"]),
    "3-harmful": (["obsm:S1", "obsm:H"], ["pca", "obsm:R2"]),
}
TOL = 0.01


def _lognorm(X) -> np.ndarray:
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    tot = X.sum(1, keepdims=True)
    return np.log1p(X / np.where(tot > 0, tot, 1) * 1e4).astype(np.float32)


def prepare(a, name: str, pretrain_epochs: int) -> None:
    """Sources and the second residual modality in ``obsm``."""
    if name == "lymph_node_d1":
        a.obsm["S1"] = bc.ae_source(a, name, epochs=4 * pretrain_epochs, transform="plain-log1p")
        L = np.log1p(a.X.toarray())
        a.obsm["R2"] = (L - L.mean(1, keepdims=True)).astype(np.float32)

        def clr(x):
            lx = np.log1p(x)
            return lx - lx.mean(1, keepdims=True)

        from scresidual.sources import pretrain_autoencoder

        def make():
            src = pretrain_autoencoder(
                a.X, transform=clr, n_latent=8, seed=1, max_epochs=4 * pretrain_epochs
            )
            return src.embed(a, progress=False)

        a.obsm["S2"] = bc._cached(
            bc.CACHE / f"{name}_ae_clr_l8_e{4 * pretrain_epochs}_s1.npy", make
        )
    else:
        a.obsm["S1"] = bc.scvi_source(a, name, epochs=pretrain_epochs)
        L = _lognorm(a.X)
        top = np.argsort(-L.var(0))[:50]
        a.obsm["R2"] = L[:, top]
        a.obsm["S2"] = bc.ae_source(a, name, epochs=4 * pretrain_epochs, transform="log1p")
    a.obsm["H"] = bc.harmful_source(a, name)


def run_seed(a, seed: int, train_kw: dict) -> dict:
    """All configurations for one seed."""
    m = bc.split_random(a, 0.10, seed)
    train = a.copy()
    train.obs["y"] = np.where(m, a.obs["truth"].to_numpy(dtype=object), None)
    common = dict(graph="knn:6", library=None, seed=seed, **train_kw)
    scratch_cache, r = {}, {}
    for cname, (sources, features) in CONFIGS.items():
        fkey = tuple(features)
        if fkey not in scratch_cache:
            scratch_cache[fkey] = bc.fit_arm(
                train, a, ~m, arm="scratch", sources=[], features=features, **common
            )
        lp = bc.fit_arm(
            train, a, ~m, arm="linear-probe", sources=sources, features=features, **common
        )
        ref = bc.fit_arm(train, a, ~m, arm="refine", sources=sources, features=features, **common)
        guarded = bc.fit_arm(
            train, a, ~m, arm="refine", sources=sources, features=features, guard=True, **common
        )
        r[cname] = {
            "scratch": scratch_cache[fkey],
            "linear-probe": lp,
            "refine-noguard": ref,
            "refine": guarded,
        }
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=SLIDES, choices=SLIDES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="lymph_node_d1, seed 0")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--pretrain-epochs", type=int, default=60)
    p.add_argument("--out", default=str(bc.RESULTS / "multimodal.json"))
    args = p.parse_args(argv)
    ddir = bc.data_dir(args.data_dir)
    bc.quiet()
    bc.apply_quick(args, argv, "lymph_node_d1")
    train_kw = {}  # the linear encoder is fitted exactly: no epochs (an error if given)
    t0 = time.time()
    rows = []
    arms = ["linear-probe", "scratch", "refine-noguard", "refine"]
    for name in args.datasets:
        a = bc.load(name, ddir)
        prepare(a, name, args.pretrain_epochs)
        runs = []
        for seed in args.seeds:
            ts = time.time()
            runs.append(run_seed(a, seed, train_kw))
            print(
                f"  {name} seed {seed}: "
                + "; ".join(
                    f"{c}: " + ",".join(f"{k}={v['macro_f1']:.3f}" for k, v in runs[-1][c].items())
                    for c in CONFIGS
                )
                + f"  ({time.time() - ts:.0f}s)",
                flush=True,
            )
        for cname in CONFIGS:
            s = {arm: bc.summarise([r[cname][arm] for r in runs]) for arm in arms}
            s["refine"]["chosen"] = [r[cname]["refine"]["chosen"] for r in runs]
            f = {arm: s[arm]["macro_f1"]["mean"] for arm in arms}
            rows.append(
                {
                    "dataset": name,
                    "config": cname,
                    "sources": CONFIGS[cname][0],
                    "features": CONFIGS[cname][1],
                    "seeds": args.seeds,
                    "summary": s,
                    "gain_over_linear_probe": f["refine"] - f["linear-probe"],
                    "gain_over_scratch": f["refine"] - f["scratch"],
                    "refine>=scratch-0.01": f["refine"] >= f["scratch"] - TOL,
                    "runs": [r[cname] for r in runs],
                }
            )
        bc.write_json(
            Path(args.out), {"rows": rows, "options": train_kw, "seconds": round(time.time() - t0)}
        )
    print(
        f"\n{'dataset':<11} {'config':<10} {'lin-probe F1':>14} {'scratch F1':>14} "
        f"{'refine-noguard':>14} {'refine F1':>14} {'gain/LP':>8} {'gain/scr':>8}  check  guard"
    )
    for row in rows:
        s = row["summary"]
        cells = " ".join(
            f"{s[a]['macro_f1']['mean']:.3f}±{s[a]['macro_f1']['sd']:.3f}".rjust(14) for a in arms
        )
        print(
            f"{row['dataset']:<11} {row['config']:<10} {cells} "
            f"{row['gain_over_linear_probe']:+8.3f} {row['gain_over_scratch']:+8.3f}  "
            f"{'PASS' if row['refine>=scratch-0.01'] else 'FAIL'}   "
            f"{','.join(s['refine']['chosen'])}"
        )
    print(f"total {time.time() - t0:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
