"""Benchmark: spatial region labelling, scresidual against CellCharter + LR and BANKSY + LR.

Slides (``../shared/data/spatial``): STARmap, BaristaSeq (3 slices), DLPFC 151510 and the two
lymph-node sections A1/D1 (31 proteins, 10 named regions). Every method reads the **same
frozen embedding**: one SCVI per slide file (10 latent dimensions, trained on its counts with
no labels and no coordinates, cached under ``benchmarks/.cache/``).

Protocols (macro-F1 on the hidden cells):

* ``random10``: 10% of the cells labelled at random (seeds 0 1 2), scored on the rest;
* ``half``: on each slide, the cells below the median of the axis whose two halves have the
  most alike region mix are labelled, the other half is scored (3 training seeds);
* ``cross-slide``: BaristaSeq slices 1-2 → 3, lymph node A1 → D1 (3 training seeds).

Methods: scresidual's default (``refine``: frozen source + spatial residual, guarded), its
``scratch`` and ``linear-probe`` arms, ``refine`` with a *harmful* source (an MLP fitted to
80%-flipped labels), CellCharter + LR and BANKSY + LR (see ``_peers.py``), each with the CPU
seconds of fit + predict (graph, features, CV, fit and predict; every method runs once
untimed first, so imports and one-off compilation are excluded). The
unsupervised clustering ARI of each peer's features is reported as context.

Usage::

    pip install -e ".[bench]"
    python benchmarks/spatial_regions.py                        # everything, seeds 0 1 2
    python benchmarks/spatial_regions.py --quick                # starmap, seed 0
    python benchmarks/spatial_regions.py --datasets dlpfc --seeds 0
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402
import _peers  # noqa: E402

CROSS = {"baristaseq": (["Slice_1", "Slice_2"], ["Slice_3"]), "lymph_node": (["A1"], ["D1"])}
METHODS = ["refine", "scratch", "linear-probe", "harmful:refine", "cellcharter+lr", "banksy+lr"]
PEERS = ("cellcharter+lr", "banksy+lr")
TOL = 0.01


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def half_mask(a, library: str | None) -> np.ndarray:
    """Per slide: below the median of the axis whose halves have the most alike region mix."""
    truth = a.obs["truth"].to_numpy()
    classes = np.unique(truth)
    libs = np.zeros(a.n_obs, dtype=int) if library is None else a.obs[library].cat.codes.to_numpy()
    mask = np.zeros(a.n_obs, dtype=bool)
    for lib in np.unique(libs):
        idx = np.flatnonzero(libs == lib)
        xy, t = a.obsm["spatial"][idx], truth[idx]
        best = None
        for axis in (0, 1):
            low = xy[:, axis] < np.median(xy[:, axis])
            tv = sum(abs((t[low] == c).mean() - (t[~low] == c).mean()) for c in classes)
            if best is None or tv < best[0]:
                best = (tv, low)
        mask[idx[best[1]]] = True
    return mask


def protocols(name: str) -> list[str]:
    """Protocols run on a dataset."""
    return ["random10", "half"] + (["cross-slide"] if name in CROSS else [])


def split(a, name: str, protocol: str, seed: int):
    """``(train, test, eval mask, same)``; ``train.obs['y']`` holds the visible labels and
    ``same`` says whether train and test are the same cells."""
    library = bc.DATASETS[name]["library"]
    truth = a.obs["truth"].to_numpy(dtype=object)
    if protocol in ("random10", "half"):
        m = bc.split_random(a, 0.10, seed) if protocol == "random10" else half_mask(a, library)
        train = a.copy()
        train.obs["y"] = np.where(m, truth, None)
        return train, a, ~m, True
    fit_on, _ = CROSS[name]
    tr = a.obs[library].astype(str).isin(fit_on).to_numpy()
    if not tr.any() or tr.all():
        raise SystemExit(f"{name}: slides {fit_on} not found in obs[{library!r}]")
    train = a[tr].copy()
    train.obs["y"] = train.obs["truth"].to_numpy(dtype=object)
    test = a[~tr].copy()
    return train, test, np.ones(test.n_obs, dtype=bool), False


def labelled(train) -> np.ndarray:
    y = train.obs["y"].to_numpy(dtype=object)
    return np.array([v is not None and v == v for v in y])


def run_scresidual(
    train, test, mask, *, library, seed, arm="refine", sources=("obsm:X_scVI",), **options
):
    """One arm of :class:`scresidual.model.SpatialRegionClassifier`, library defaults unless
    ``options`` (of ``fit_regions``) say otherwise."""
    from scresidual.tl import fit_regions

    t = cpu_seconds()
    clf = fit_regions(
        train,
        labels_key="y",
        sources=list(sources),
        library_key=library,
        arm=arm,
        seed=seed,
        progress=False,
        **options,
    )
    P = clf.predict_proba(test).to_numpy()
    pred = np.asarray(clf.classes_, dtype=object)[P.argmax(1)]
    out = bc.metrics(test.obs["truth"].to_numpy()[mask], pred[mask])
    out["cpu_s"] = round(cpu_seconds() - t, 2)
    out["chosen"] = clf.chosen_arm_
    out["report"] = clf.guard_report_
    return out


def run_peer(kind, train, test, mask, same, *, library, seed):
    """CellCharter + LR or BANKSY + LR, features and all, timed."""
    t = cpu_seconds()
    if kind == "cellcharter+lr":
        Ftr = _peers.cellcharter_features(train, use_rep="X_scVI", library=library)
        Fte = Ftr if same else _peers.cellcharter_features(test, use_rep="X_scVI", library=library)
    else:
        Btr = _peers.banksy_features(train, library=library, seed=seed)
        Bte = Btr if same else _peers.banksy_features(test, library=library, seed=seed)
        Ftr, Fte = _peers.banksy_pca(Btr, Bte, seed)
    out, grid = lr_on_features(Ftr, Fte, train, test, mask, seed)
    out["cpu_s"] = round(cpu_seconds() - t, 2)
    out["C"] = grid.best_params_["logisticregression__C"]
    return out


def lr_on_features(Ftr, Fte, train, test, mask, seed):
    """A peer's last step: tuned LR on the labelled training cells' features, scored on
    ``test[mask]``; ``(metrics, fitted grid)``."""
    m = labelled(train)
    grid = _peers.tuned_lr(Ftr[m], train.obs["y"].to_numpy()[m].astype(str), seed)
    return bc.metrics(test.obs["truth"].to_numpy()[mask], grid.predict(Fte)[mask]), grid


def run_seed(a, name: str, protocol: str, seed: int) -> dict:
    """Every method on one split."""
    library = bc.DATASETS[name]["library"]
    train, test, mask, same = split(a, name, protocol, seed)
    kw = {"library": library, "seed": seed}
    return {
        "refine": run_scresidual(train, test, mask, **kw),
        "scratch": run_scresidual(train, test, mask, arm="scratch", sources=(), **kw),
        "linear-probe": run_scresidual(train, test, mask, arm="linear-probe", **kw),
        "harmful:refine": run_scresidual(train, test, mask, sources=("obsm:X_harmful",), **kw),
        "cellcharter+lr": run_peer("cellcharter+lr", train, test, mask, same, **kw),
        "banksy+lr": run_peer("banksy+lr", train, test, mask, same, **kw),
    }


def warm_up(a, name: str) -> None:
    """Run every method once on part of a slide, untimed: CPU seconds then exclude imports and
    one-off compilation (numba in squidpy) for all methods alike."""
    part = a[: min(a.n_obs, 400)].copy()
    if bc.DATASETS[name]["library"]:
        part.obs[bc.DATASETS[name]["library"]] = "0"
    run_seed(part, name, "random10", 0)


def clustering_ari(a, name: str) -> dict:
    """Unsupervised context: GMM ARI on each peer's features of every cell."""
    library = bc.DATASETS[name]["library"]
    truth = a.obs["truth"].to_numpy()
    cc = _peers.cellcharter_features(a, use_rep="X_scVI", library=library)
    B = _peers.banksy_features(a, library=library)
    bp = _peers.banksy_pca(B, B, 0)[0]
    return {"cellcharter": _peers.cluster_ari(cc, truth), "banksy": _peers.cluster_ari(bp, truth)}


def criteria(summary: dict) -> dict:
    """Per-case checks on the seed means."""
    f = {k: v["macro_f1"]["mean"] for k, v in summary.items()}
    return {
        "refine>=best_peer-0.01": f["refine"] >= max(f[p] for p in PEERS) - TOL,
        "refine>=max(scratch,probe)-0.01": f["refine"]
        >= max(f["scratch"], f["linear-probe"]) - TOL,
        "harmful>=scratch-0.01": f["harmful:refine"] >= f["scratch"] - TOL,
        "cpu<=2x_banksy": summary["refine"]["cpu_s"] <= 2 * summary["banksy+lr"]["cpu_s"],
    }


def overall(rows: list[dict]) -> dict:
    """Means over every slide × protocol case, and the headline check."""
    means = {
        k: float(np.mean([r["summary"][k]["macro_f1"]["mean"] for r in rows])) for k in METHODS
    }
    best_peer = max(PEERS, key=means.get)
    return {
        "mean_macro_f1": means,
        "best_peer": best_peer,
        "refine_mean>=best_peer_mean+0.02": means["refine"] >= means[best_peer] + 0.02,
        "all_cases_pass": all(all(r["criteria"].values()) for r in rows),
    }


def summarise(runs: list[dict]) -> dict:
    out = {}
    for k in METHODS:
        out[k] = bc.summarise([r[k] for r in runs])
        out[k]["cpu_s"] = float(np.mean([r[k]["cpu_s"] for r in runs]))
        if "chosen" in runs[0][k]:
            out[k]["chosen"] = [r[k]["chosen"] for r in runs]
    return out


def print_table(rows: list[dict], total: dict) -> None:
    """Macro-F1 (mean of seeds) and CPU seconds per method; ✓/✗ per criterion."""
    head = "".join(f"{k:>16}" for k in METHODS)
    print(f"\n{'slide':<11}{'protocol':<12}{head}  criteria")
    for r in rows:
        s = r["summary"]
        cells = "".join(
            f"{s[k]['macro_f1']['mean']:>9.3f} ({s[k]['cpu_s']:>3.0f}s)" for k in METHODS
        )
        checks = " ".join("✓" if v else "✗" for v in r["criteria"].values())
        print(f"{r['dataset']:<11}{r['protocol']:<12}{cells}  {checks}")
    means = "".join(f"{total['mean_macro_f1'][k]:>16.3f}" for k in METHODS)
    print(f"{'mean':<23}{means}")
    print(
        f"best peer {total['best_peer']}; refine mean ≥ it + 0.02: "
        f"{total['refine_mean>=best_peer_mean+0.02']}; every case passes: "
        f"{total['all_cases_pass']}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(bc.SPATIAL), choices=list(bc.SPATIAL))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="starmap only (unless --datasets), seed 0")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding spatial/*.h5ad "
        "(default ../shared/data relative to the repository root)",
    )
    p.add_argument("--pretrain-epochs", type=int, default=100)
    p.add_argument("--out", default=str(bc.RESULTS / "spatial_regions.json"))
    args = p.parse_args(argv)
    ddir = bc.data_dir(args.data_dir)
    bc.quiet()
    bc.apply_quick(args, argv, "starmap")
    t0 = time.time()
    rows, context = [], {}
    for name in args.datasets:
        t = time.time()
        a = bc.load(name, ddir)
        a.obsm["X_scVI"] = bc.scvi_source(a, name, epochs=args.pretrain_epochs, tag="_l10")
        a.obsm["X_harmful"] = bc.harmful_source(a, name)
        if not rows:
            warm_up(a, name)
        context[name] = clustering_ari(a, name)
        print(
            f"[{name}] {a.n_obs} cells, {a.n_vars} features; clustering ARI "
            + ", ".join(f"{k} {v:.3f}" for k, v in context[name].items())
            + f" ({time.time() - t:.0f}s)",
            flush=True,
        )
        for protocol in protocols(name):
            runs = []
            for seed in args.seeds:
                ts = time.time()
                runs.append(run_seed(a, name, protocol, seed))
                print(
                    f"  {name}/{protocol} seed {seed}: "
                    + ", ".join(f"{k}={v['macro_f1']:.3f}" for k, v in runs[-1].items())
                    + f" [{runs[-1]['refine']['chosen']}] ({time.time() - ts:.0f}s)",
                    flush=True,
                )
            summary = summarise(runs)
            rows.append(
                {
                    "dataset": name,
                    "protocol": protocol,
                    "seeds": args.seeds,
                    "summary": summary,
                    "criteria": criteria(summary),
                    "runs": runs,
                }
            )
            bc.write_json(
                Path(args.out),
                {
                    "rows": rows,
                    "clustering_ari": context,
                    "overall": overall(rows),
                    "pretrain_epochs": args.pretrain_epochs,
                    "seconds": round(time.time() - t0),
                },
            )
    total = overall(rows)
    print_table(rows, total)
    print(f"total {time.time() - t0:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
