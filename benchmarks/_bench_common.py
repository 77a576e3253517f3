"""Shared helpers of the spatial benchmarks: data, cached frozen sources, arms, baseline, tables."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache"
RESULTS = REPO / "benchmarks" / "results"

DATASETS = {
    "starmap": {
        "file": "starmap_v1.h5ad",
        "labels": "layer",
        "library": None,
        "kind": "counts",
        "graph": "knn:6",
    },
    "baristaseq": {
        "file": "baristaseq_visp.h5ad",
        "labels": "layer",
        "library": "slice",
        "kind": "counts",
        "graph": "knn:6",
    },
    "dlpfc": {
        "file": "dlpfc_151510.h5ad",
        "labels": "annotation",
        "library": None,
        "kind": "counts",
        "graph": "knn:6",
    },
    "lymph_node": {
        "file": "lymph_node_a1_d1_protein.h5ad",
        "labels": "region",
        "library": "slide",
        "kind": "protein",
        "graph": "knn:6",
    },
    "lymph_node_d1": {
        "file": "lymph_node_d1_protein.h5ad",
        "labels": "region_code",
        "library": None,
        "kind": "protein",
        "graph": "knn:6",
    },
}
SPATIAL = ("starmap", "baristaseq", "dlpfc", "lymph_node")
"""Slides of the region benchmark (``lymph_node_d1`` is the multimodal benchmark's)."""


def quiet() -> None:
    """Silence warnings and library chatter; one torch and BLAS thread.

    Shared CPUs thrash otherwise, and idle BLAS threads spin: CPU seconds would count them.
    """
    import torch
    from threadpoolctl import threadpool_limits

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    threadpool_limits(1)
    for name in ("lightning", "lightning.pytorch", "scvi", "squidpy", "anndata", "scresidual"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")


def data_dir(arg: str | None) -> Path:
    """The shared data folder, or exit with a clear message."""
    path = Path(arg) if arg else REPO.parent / "shared" / "data"
    if not (path / "spatial").is_dir():
        sys.exit(
            f"data folder {path / 'spatial'} not found: pass --data-dir pointing at the shared "
            "data (the folder holding spatial/*.h5ad)."
        )
    return path


def load(name: str, ddir: Path):
    """Read a slide; labels as strings (NaN dropped), counts in ``X`` as float32 CSR."""
    import anndata as ad
    import scipy.sparse as sp

    cfg = DATASETS[name]
    a = ad.read_h5ad(ddir / "spatial" / cfg["file"])
    y = a.obs[cfg["labels"]]
    keep = ~y.isna().to_numpy()
    a = a[keep].copy()
    a.obs["truth"] = a.obs[cfg["labels"]].astype(str).to_numpy()
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    a.layers.clear()
    a.obs_names_make_unique()
    if cfg["library"]:
        a.obs[cfg["library"]] = a.obs[cfg["library"]].astype(str).astype("category")
    return a


def apply_quick(args, argv, dataset: str) -> None:
    """``--quick``: ``dataset`` only (unless ``--datasets`` is given), seed one, 60 epochs."""
    if not args.quick:
        return
    if "--datasets" not in (argv or sys.argv):
        args.datasets = [dataset]
    args.seeds, args.max_epochs = args.seeds[:1], 60


def _cached(path: Path, make):
    if path.is_file():
        return np.load(path)
    Z = np.asarray(make(), dtype=np.float32)
    with _atomic(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, Z)
    return Z


def scvi_source(a, name: str, *, epochs: int, tag: str = "", seed: int = 0) -> np.ndarray:
    """Embedding of an SCVI model pretrained on the slide's counts (no labels, no coordinates).

    ``seed``: which independent training (0 is the one every benchmark reads by default).
    """
    from scresidual.sources import ScviSource, pretrain_scvi

    stem = f"{name}_scvi_e{epochs}{tag}" + (f"_s{seed}" if seed else "")
    mdir = CACHE / stem

    def make():
        if (mdir / "model.pt").is_file():
            src = ScviSource.load(mdir)
        else:
            t = time.time()
            src = pretrain_scvi(a, mdir, max_epochs=epochs, seed=seed, progress=False)
            print(f"  [{name}] pretrained SCVI ({epochs} epochs) in {time.time() - t:.0f}s")
        return src.embed(a, progress=False)

    return _cached(CACHE / f"{stem}.npy", make)


def ae_source(
    a, name: str, *, epochs: int, transform="log1p", n_latent: int = 16, seed: int = 0
) -> np.ndarray:
    """Embedding of a denoising autoencoder pretrained on the slide's values alone."""
    from scresidual.sources import pretrain_autoencoder

    def make():
        t = time.time()
        tf = np.log1p if transform == "plain-log1p" else transform
        src = pretrain_autoencoder(
            a.X,
            transform=tf,
            max_epochs=epochs,
            n_latent=n_latent,
            seed=seed,
            name=f"{name} autoencoder",
        )
        print(
            f"  [{name}] pretrained autoencoder ({epochs} epochs max) in "
            f"{time.time() - t:.0f}s, validation MSE {src.validation_mse_:.3f}"
        )
        return src.embed(a, progress=False)

    return _cached(CACHE / f"{name}_ae_{transform}_l{n_latent}_e{epochs}_s{seed}.npy", make)


def harmful_source(
    a, name: str, *, flip: float = 0.8, epochs: int = 300, seed: int = 0
) -> np.ndarray:
    """Hidden features of an MLP trained (to memorisation) on labels with ``flip`` flipped.

    The stress tests' own corruption and source (:func:`scresidual.stress.flip_labels`, each
    flipped label to a uniformly drawn *wrong* class; an MLP backbone + linear head) read the
    PCA of the slide's own values; the frozen backbone's features are the source.
    """
    from scresidual.pp import PCAFeatures
    from scresidual.sources import pretrain_mlp_source, source_outputs
    from scresidual.stress import flip_labels

    def make():
        classes, y = np.unique(a.obs["truth"].to_numpy(), return_inverse=True)
        noisy = flip_labels(y, flip, n_classes=len(classes), seed=seed + 1000)
        X = PCAFeatures.fit(a, n_comps=30, seed=seed).transform(a)
        X = ((X - X.mean(0)) / (X.std(0) + 1e-6)).astype(np.float32)
        model = pretrain_mlp_source(
            X, noisy, n_classes=len(classes), n_hidden=256, n_out=64, epochs=epochs, seed=seed
        )
        feats, logits = source_outputs(model, X)
        print(
            f"  [{name}] harmful MLP: accuracy on its noisy labels "
            f"{(logits.argmax(1) == noisy).mean():.2f}, on the true labels "
            f"{(logits.argmax(1) == y).mean():.2f} ({flip:.0%} flipped)"
        )
        return feats

    path = CACHE / f"{name}_harmful_stress_f{int(flip * 100)}_e{epochs}_s{seed}.npy"
    return _cached(path, make)


def split_random(a, frac: float, seed: int) -> np.ndarray:
    """Boolean mask of the labelled cells: ``frac`` at random, at least one per class."""
    rng = np.random.default_rng(seed)
    m = rng.random(a.n_obs) < frac
    y = a.obs["truth"].to_numpy()
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if not m[idx].any():
            m[rng.choice(idx)] = True
    return m


def metrics(y_true, y_pred) -> dict:
    """Accuracy and macro-F1 over the classes present in the truth."""
    from sklearn.metrics import accuracy_score, f1_score

    labels = np.unique(y_true)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
    }


def fit_arm(train, test, mask, *, arm, sources, features, graph, library, seed, guard=False, **kw):
    """Fit one arm of :class:`SpatialRegionClassifier`; metrics on ``test[mask]`` + guard details.

    Predictions are made on the whole ``test`` slide (its graph needs every cell) and scored on
    the evaluated cells only.
    """
    from scresidual.tl import fit_regions

    t = time.time()
    clf = fit_regions(
        train,
        labels_key="y",
        sources=sources,
        features=features,
        graph=graph,
        library_key=library,
        arm=arm,
        seed=seed,
        progress=False,
        guard=guard,
        **kw,
    )
    P = clf.predict_proba(test)
    pred = np.asarray(clf.classes_, dtype=object)[P.to_numpy().argmax(1)]
    out = metrics(test.obs["truth"].to_numpy()[mask], pred[mask])
    out["chosen"] = clf.chosen_arm_
    out["report"] = clf.guard_report_
    out["val_loss"] = clf.guard_report_[clf.chosen_arm_]["val_loss"]
    out["seconds"] = round(time.time() - t, 1)
    return out


def summarise(runs: list[dict], keys=("accuracy", "macro_f1")) -> dict:
    """Mean and sd over seeds."""
    out = {}
    for k in keys:
        v = np.array([r[k] for r in runs], dtype=float)
        out[k] = {
            "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "per_seed": [round(float(x), 4) for x in v],
        }
    return out


@contextlib.contextmanager
def _atomic(path: Path):
    """A temporary file beside ``path`` that replaces it on success (a crash leaves no half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj) -> None:
    """Atomic JSON write."""
    with _atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str))
