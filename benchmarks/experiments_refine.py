"""Experiments on REFINE's training options (no core edits): source regularisation and refit.

For one dataset (random 10% protocol) and a few seeds, fits ``refine`` (guard off) with the
real and the harmful source under option variants, plus ``refit``: the guard's choice between
refine and scratch (default options), refitted on *all* labelled cells (validation_size=0)
for ``ceil(1.25 * (best_epoch + 1))`` epochs.

Usage::

    python benchmarks/experiments_refine.py --dataset starmap --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402
import spatial_regions as sr  # noqa: E402

VARIANTS = {
    "default": {},
    "swd=0.1": {"source_weight_decay": 0.1},
    "sdrop=0.3": {"source_dropout": 0.3},
    "val=0.3": {"validation_size": 0.3},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="starmap", choices=list(bc.DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS) + ["refit"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--pretrain-epochs", type=int, default=60)
    p.add_argument("--out", default=str(bc.RESULTS / "experiments_refine.json"))
    args = p.parse_args(argv)
    ddir = bc.data_dir(args.data_dir)
    bc.quiet()
    name = args.dataset
    cfg = bc.DATASETS[name]
    a = bc.load(name, ddir)
    if cfg["kind"] == "counts":
        a.obsm["X_source"] = bc.scvi_source(a, name, epochs=args.pretrain_epochs)
    else:
        a.obsm["X_source"] = bc.ae_source(a, name, epochs=4 * args.pretrain_epochs,
                                          transform="plain-log1p")
    a.obsm["X_harmful"] = bc.harmful_source(a, name)
    out = {}
    for seed in args.seeds:
        train, test, mask = sr.splits(a, name, "random10", seed)
        common = dict(features=["pca"], graph=cfg["graph"], library=cfg["library"], seed=seed)
        base = {}
        for var in args.variants:
            t = time.time()
            res = {}
            if var == "refit":
                for src in ("X_source", "X_harmful"):
                    for arm in ("refine", "scratch"):
                        key = (src, arm)
                        if key not in base:
                            base[key] = bc.fit_arm(
                                train, test, mask, arm=arm,
                                sources=[f"obsm:{src}"] if arm == "refine" else [], **common)
                    ref, scr = base[(src, "refine")], base[(src, "scratch")]
                    pick = ref if ref["val_loss"] <= scr["val_loss"] else scr
                    arm = pick["chosen"]
                    epochs = math.ceil(1.25 * (pick["report"][arm]["best_epoch"] + 1))
                    r = bc.fit_arm(train, test, mask, arm=arm,
                                   sources=[f"obsm:{src}"] if arm == "refine" else [],
                                   validation_size=0, max_epochs=epochs, **common)
                    r["chosen"] = arm
                    res[src] = r
                res["scratch-refit"] = bc.fit_arm(
                    train, test, mask, arm="scratch", sources=[], validation_size=0,
                    max_epochs=math.ceil(
                        1.25 * (base[("X_source", "scratch")]["report"]["scratch"]["best_epoch"]
                                + 1)), **common)
            else:
                for src in ("X_source", "X_harmful"):
                    res[src] = bc.fit_arm(train, test, mask, arm="refine",
                                          sources=[f"obsm:{src}"], **common, **VARIANTS[var])
                res["scratch"] = bc.fit_arm(train, test, mask, arm="scratch", sources=[],
                                            **common, **VARIANTS[var])
                if var == "default":
                    base.update({("X_source", "refine"): res["X_source"],
                                 ("X_harmful", "refine"): res["X_harmful"],
                                 ("X_source", "scratch"): res["scratch"],
                                 ("X_harmful", "scratch"): res["scratch"]})
            out.setdefault(var, []).append({"seed": seed, **res})
            print(f"{name} seed {seed} {var:<10}: " + ", ".join(
                f"{k}={v['macro_f1']:.3f}({v['chosen']},vl={v['val_loss']:.3f})"
                for k, v in res.items()) + f"  ({time.time() - t:.0f}s)", flush=True)
        bc.write_json(Path(args.out.replace(".json", f"_{name}.json")), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
