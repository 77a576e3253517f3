"""Scaling benchmark: the SIGN-style spatial pipeline vs a dense-adjacency GCN, 10^4-10^6 cells.

Each (method, size) runs in its own subprocess so that peak memory is per size. The slides
are generated: sparse Poisson counts over ``--genes`` genes whose means depend on a cell type,
cell-type composition depends on a spatially smooth region map (warped Voronoi cells), and
10% of the cells carry their region label.

Pipeline (``scresidual``): spatial kNN graph (squidpy, k=6) -> frozen source embedding (a
small SCVI pretrained once on a 10^4-cell slide for a few epochs, applied frozen) -> PCA
features + 2 neighbourhood hops -> training for exactly 5 epochs -> prediction for every cell
(on the views already computed). Baseline (``dense-gcn``): the same PCA features and kNN
graph, but a 2-layer GCN on the dense n x n row-normalised adjacency, full batch, 5 epochs;
sizes whose dense float32 matrix would not fit are skipped and marked as such.

Tiled (``tiled-grid``: a Visium HD-like square grid; ``tiled-cloud``: a Xenium-like point
cloud): the slide, 1% of its cells labelled at random, is generated block by block into a
SpatialData ``.zarr`` (a table annotating one circle per cell) in its own process (never
holding the matrix: ``_slides.write_slide_store``); then, in a fresh one: the table is opened
lazily (``obs`` labels and coordinates only), the model (k-NN graph k=6, 2 rings, PCA
features, no source, exact linear fit) is set up on a 50,000-row sample (its PCA),
``train_tiled`` computes the labelled cells' inputs tile by tile and fits, and
``predict_tiled`` labels every cell tile by tile (graph, PCA, rings, prediction) and writes
the columns back into the store. ``--n-jobs`` processes run the tiles; each stage reports the
peak of the process and of its workers together (``peak_tree_rss_gib``). Peers (``banksy``,
``cellcharter``): their features on the whole slide in memory (benchmarks/_peers.py), then a
logistic regression on the labelled cells. Every child runs under ``RLIMIT_AS``
(``--memory-limit-gib``, default 16) and ``--timeout`` (default 30 min); a run stopped by
either says so in its row.

Usage::

    python benchmarks/scale.py                      # 1e4, 1e5, 1e6
    python benchmarks/scale.py --sizes 10000 100000 --out /tmp/scale.json
    python benchmarks/scale.py --sizes 1000000 10000000 --methods tiled-cloud --n-jobs 2 \\
        --out benchmarks/results/scale_tiled_1e7.json
    python benchmarks/scale.py --sizes 100000 1000000 --methods banksy cellcharter
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _slides import make_slide, write_slide_store  # noqa: E402

EPOCHS = 5


# ---------------------------------------------------------------------------- memory probes
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def _tree(pid: int) -> list[int]:
    """Process ``pid`` and all its descendants (worker processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):  # the process ended meanwhile
            continue
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and all its descendants."""
    page, total = os.sysconf("SC_PAGE_SIZE"), 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError):
            continue
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its living descendants.

    Independent of other load on the machine: with 2 cores, about twice the idle wall time of
    a stage whose work is spread over two processes.
    """
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            continue
    return total / tick


class TreePeak:
    """The largest :func:`tree_rss` of ``pid`` seen since the last :meth:`reset` (sampled)."""

    def __init__(self, pid: int, every: float = 0.2):
        import threading

        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, tree_rss(self.pid))

    def reset(self) -> None:
        self.peak = tree_rss(self.pid)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, tree_rss(self.pid))


class Stages:
    """Wall time and peak RSS per stage (peak via VmHWM, reset between stages).

    ``peak_tree_rss_gib``: the largest resident size of this process and its worker
    processes together (sampled every 0.2 s), the figure that counts with ``n_jobs > 1``;
    ``cpu_s``: their CPU seconds in the stage (workers alive at its end).
    """

    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.can_reset = _reset_peak()
        self.tree = TreePeak(os.getpid())

    def run(self, name: str, n_items: int, fn, *args, **kwargs):
        if self.can_reset:
            _reset_peak()
        self.tree.reset()
        cpu = tree_cpu(os.getpid())
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t
        cpu = tree_cpu(os.getpid()) - cpu
        peak = _status("VmHWM") if self.can_reset else None
        self.rows[name] = {
            "seconds": dt,
            "peak_rss_gib": peak / 2**30 if peak else None,
            "peak_tree_rss_gib": max(self.tree.peak, peak or 0) / 2**30,
            "cpu_s": cpu,
            "items": n_items,
            "items_per_s": n_items / dt if dt > 0 else None,
        }
        return out


# ---------------------------------------------------------------------------- workers
def worker_scresidual(n: int, n_genes: int, scvi_dir: str, seed: int) -> dict:
    import squidpy  # noqa: F401  (import once, outside the timed graph stage)
    import torch

    from scresidual.model import ResidualModel
    from scresidual.pp import PCAFeatures, neighbourhood_rings, spatial_graph
    from scresidual.sources import ScviSource

    torch.set_num_threads(max(os.cpu_count() or 1, 1))
    st = Stages()
    adata = st.run("generate", n, make_slide, n, n_genes, seed)
    source = ScviSource.load(scvi_dir)
    conn, _ = st.run("graph", n, spatial_graph, adata, graph="knn:6", copy=True)
    z = st.run("source_embedding", n, source.embed, adata, progress=False)

    def pca_features():
        return PCAFeatures.fit(adata, n_comps=30, seed=seed).transform(adata)

    pca = st.run("pca_features", n, pca_features)
    hops = st.run("hops", n, neighbourhood_rings, pca, conn, 2)
    views = {"source": z, "features": hops.reshape(n, -1)}
    y = adata.obs["region"].to_numpy()
    n_lab = int(adata.obs["region"].notna().sum())
    # The spatial classifier's default: linear residual, fitted exactly (no epochs).
    model = ResidualModel(
        sources=["source"],
        residuals={"features": ("linear", {})},
        solver="lbfgs",
        guard=False,
        progress=False,
        accelerator="cpu",
        devices=1,
        seed=seed,
    )
    st.run("train", n_lab, model.fit, views, y)
    proba = st.run("predict", n, model.predict_proba, views)
    pred = np.asarray(model.classes_)[proba.argmax(1)]
    unl = adata.obs["region"].isna().to_numpy()
    acc = float((pred[unl] == adata.obs["truth"].to_numpy()[unl]).mean())
    return {"stages": st.rows, "accuracy_unlabelled": acc}


def worker_dense(n: int, n_genes: int, seed: int) -> dict:
    import squidpy  # noqa: F401  (import once, outside the timed graph stage)
    import torch
    from torch import nn

    from scresidual.pp import PCAFeatures, spatial_graph

    torch.manual_seed(seed)
    st = Stages()
    adata = st.run("generate", n, make_slide, n, n_genes, seed)
    conn, _ = st.run("graph", n, spatial_graph, adata, graph="knn:6", copy=True)

    def dense_adjacency():
        A = torch.zeros((n, n), dtype=torch.float32)  # the n x n matrix
        c = conn.tocoo()
        A[torch.as_tensor(c.row, dtype=torch.long), torch.as_tensor(c.col, dtype=torch.long)] = 1
        A.fill_diagonal_(1.0)
        A /= A.sum(1, keepdim=True)
        return A

    A = st.run("dense_adjacency", n, dense_adjacency)
    pca = st.run(
        "pca_features",
        n,
        lambda: PCAFeatures.fit(adata, n_comps=30, seed=seed).transform(adata),
    )
    X = torch.as_tensor(pca)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    labels = adata.obs["region"]
    lab = labels.notna().to_numpy()
    classes = sorted(set(labels[lab]))
    y = torch.as_tensor(
        np.searchsorted(classes, labels[lab].to_numpy().astype(str)), dtype=torch.long
    )
    idx = torch.as_tensor(np.flatnonzero(lab))
    w1, w2 = nn.Linear(X.shape[1], 64), nn.Linear(64, len(classes))
    opt = torch.optim.Adam([*w1.parameters(), *w2.parameters()], lr=1e-2)

    def forward():
        return w2(A @ torch.relu(w1(A @ X)))

    def train():
        for _ in range(EPOCHS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(forward()[idx], y)
            loss.backward()
            opt.step()

    st.run("train", int(lab.sum()) * EPOCHS, train)
    with torch.no_grad():
        logits = st.run("predict", n, forward)
    pred = np.asarray(classes)[logits.argmax(1).numpy()]
    acc = float((pred[~lab] == adata.obs["truth"].to_numpy()[~lab]).mean())
    return {"stages": st.rows, "accuracy_unlabelled": acc}


TILED = ("tiled-grid", "tiled-cloud")
"""The tiled pipeline on a Visium HD-like grid and a Xenium-like point cloud (``.zarr``)."""
PEERS = ("banksy", "cellcharter")
WORKERS = ("scresidual", "dense-gcn", *TILED, *PEERS, "store-grid", "store-cloud")

TILED_LABELLED = 0.01
"""Share of the cells labelled, at random over the whole slide, in the tiled pipeline."""
PCA_SAMPLE = 50_000
"""Rows read to set the tiled model up (its PCA fit)."""


def store_path(tmp: str, layout: str, n: int) -> Path:
    return Path(tmp) / f"slide_{layout}_{n}.zarr"


def worker_store(n: int, n_genes: int, seed: int, layout: str, tmp: str) -> dict:
    """Generate the slide into a ``.zarr``, block by block (its own process: not in the peaks)."""
    st = Stages()
    path = store_path(tmp, layout, n)
    st.run("generate", n, write_slide_store, path, n, n_genes, seed, layout, TILED_LABELLED)
    return {"stages": st.rows}


def worker_tiled(n: int, n_genes: int, seed: int, layout: str, n_jobs: int, tmp: str) -> dict:
    """Lazy ``.zarr`` read, setup on a sample, tiled fit on 1% labels, tiled predict, write."""
    import squidpy  # noqa: F401  (import once, outside the timed stages)

    from scresidual.model import SpatialRegionClassifier, predict_tiled, train_tiled
    from scresidual.read.lazy import LazyTable

    st = Stages()
    store = store_path(tmp, layout, n)
    table = st.run("read", n, LazyTable.open, store, obs_columns=["region"])

    def setup(table):
        sample = table.sample(PCA_SAMPLE, seed=seed)
        SpatialRegionClassifier.setup_anndata(
            sample, labels_key="region", graph="knn:6", n_hops=2, n_comps=30
        )
        return SpatialRegionClassifier(sample, arm="scratch", seed=seed)

    model = st.run("setup_sample", PCA_SAMPLE, setup, table)
    n_lab = int(table.obs["region"].notna().sum())
    del table  # the tiled steps read the store themselves
    st.run("fit_tiled", n, train_tiled, model, store, n_jobs=n_jobs, progress=False)
    st.rows["fit_tiled"]["labelled"] = n_lab
    st.run("predict_tiled", n, predict_tiled, model, store, n_jobs=n_jobs, progress=False)
    frame = LazyTable.open(store, obs_columns=["region", "truth", "region_pred"]).obs
    unl = frame["region"].isna().to_numpy()
    pred = frame["region_pred"].astype(str).to_numpy()
    acc = float((pred[unl] == frame["truth"].astype(str).to_numpy()[unl]).mean())
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {"stages": st.rows, "accuracy_unlabelled": acc, "children_peak_rss_gib": children}


def worker_peer(n: int, n_genes: int, seed: int, peer: str) -> dict:
    """BANKSY or CellCharter features on the whole slide, then a logistic regression."""
    import scanpy as sc
    from sklearn.linear_model import LogisticRegression

    sys.path.insert(0, str(HERE))
    import _peers

    st = Stages()
    adata = st.run("generate", n, make_slide, n, n_genes, seed)

    def features():
        if peer == "banksy":
            B = _peers.banksy_features(adata, library=None, seed=seed)
            return _peers.banksy_pca(B, B, seed)[0]
        b = adata.copy()
        sc.pp.normalize_total(b)
        sc.pp.log1p(b)
        sc.pp.pca(b, n_comps=30, random_state=seed)
        adata.obsm["X_pca"] = b.obsm["X_pca"]
        return _peers.cellcharter_features(adata, use_rep="X_pca", library=None)

    F = st.run("features", n, features)
    lab = adata.obs["region"].notna().to_numpy()
    clf = LogisticRegression(max_iter=500)
    st.run("train", int(lab.sum()), clf.fit, F[lab], adata.obs["region"][lab].astype(str))
    pred = st.run("predict", n, clf.predict, F)
    acc = float((pred[~lab] == adata.obs["truth"].to_numpy()[~lab]).mean())
    return {"stages": st.rows, "accuracy_unlabelled": acc}


def _finish(result: dict) -> dict:
    rows = result["stages"]
    pipeline = [k for k in rows if k != "generate"]
    result["end_to_end_s"] = sum(rows[k]["seconds"] for k in pipeline)
    result["end_to_end_cpu_s"] = sum(rows[k].get("cpu_s", 0) for k in pipeline)
    # ru_maxrss follows VmHWM, which Stages resets: this is the last stage's peak; the
    # pipeline's is the largest stage peak.
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peaks = [rows[k]["peak_rss_gib"] for k in pipeline if rows[k]["peak_rss_gib"]]
    result["peak_rss_pipeline_gib"] = max(peaks) if peaks else None
    trees = [rows[k].get("peak_tree_rss_gib") or 0 for k in pipeline]
    result["peak_tree_pipeline_gib"] = max(trees) if trees else None
    return result


# ---------------------------------------------------------------------------- driver
def total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def pretrain(scvi_dir: Path, n_genes: int, seed: int) -> float:
    from scresidual.sources import pretrain_scvi

    t = time.perf_counter()
    ref = make_slide(10_000, n_genes, seed=seed + 1)
    pretrain_scvi(ref, scvi_dir, n_latent=10, max_epochs=5, seed=seed, progress=False)
    return time.perf_counter() - t


MEMORY_LIMIT = 16 * 2**30
"""Address-space limit of every child (``RLIMIT_AS``): no run can take the machine down."""


def _limit_memory() -> None:
    limit = int(os.environ.get("SCALE_MEMORY_LIMIT", MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_child(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_memory
        )
    except subprocess.TimeoutExpired:
        return {"status": f"stopped: time limit of {timeout:.0f} s"}
    if "MemoryError" in proc.stderr or "Cannot allocate memory" in proc.stderr:
        limit = int(os.environ.get("SCALE_MEMORY_LIMIT", MEMORY_LIMIT))
        return {"status": f"stopped: memory limit of {limit / 2**30:.0f} GiB (RLIMIT_AS)"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return {"status": "ok", **json.loads(line[7:])}
    return {"status": f"failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}"}


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) and v == v else "-"


def print_table(results: list[dict]) -> None:
    head = (
        f"{'method':<11}{'cells':>9}  {'stage':<17}{'wall s':>9}{'peak GiB':>10}"
        f"{'+workers':>10}{'cpu s':>9}{'items/s':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        if r["status"] != "ok":
            print(f"{r['method']:<11}{r['n']:>9}  {r['status']}")
            continue
        for name, row in r["stages"].items():
            print(
                f"{r['method']:<11}{r['n']:>9}  {name:<17}{fmt(row['seconds'], '9.1f')}"
                f"{fmt(row['peak_rss_gib'], '10.2f')}{fmt(row.get('peak_tree_rss_gib'), '10.2f')}"
                f"{fmt(row.get('cpu_s'), '9.1f')}{fmt(row['items_per_s'], '12.0f')}"
            )
        print(
            f"{r['method']:<11}{r['n']:>9}  {'END TO END':<17}{fmt(r['end_to_end_s'], '9.1f')}"
            f"{fmt(r['peak_rss_pipeline_gib'], '10.2f')}"
            f"{fmt(r.get('peak_tree_pipeline_gib'), '10.2f')}"
            f"{fmt(r.get('end_to_end_cpu_s'), '9.1f')}{fmt(r['n'] / r['end_to_end_s'], '12.0f')}"
            f"   acc(unlabelled)={r['accuracy_unlabelled']:.3f}"
        )


def tiled_ratios(results: list[dict]) -> dict[str, float]:
    """Per tiled method run at 10^6 and 10^7: the ratio of their end-to-end times."""
    done = {(r["method"], r["n"]): r for r in results if r["status"] == "ok"}
    return {
        m: done[m, 10**7]["end_to_end_s"] / done[m, 10**6]["end_to_end_s"]
        for m in TILED
        if (m, 10**6) in done and (m, 10**7) in done
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--genes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["scresidual", "dense-gcn"])
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    parser.add_argument(
        "--memory-limit-gib", type=float, default=MEMORY_LIMIT / 2**30, help="RLIMIT_AS per child"
    )
    parser.add_argument(
        "--n-jobs", type=int, default=1, help="processes of train_tiled and predict_tiled"
    )
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--scvi", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.worker == "scresidual":
            result = worker_scresidual(args.n, args.genes, args.scvi, args.seed)
        elif args.worker == "dense-gcn":
            result = worker_dense(args.n, args.genes, args.seed)
        elif args.worker in PEERS:
            result = worker_peer(args.n, args.genes, args.seed, args.worker)
        elif args.worker.startswith("store-"):
            layout = args.worker.split("-")[1]
            print(
                "RESULT "
                + json.dumps(worker_store(args.n, args.genes, args.seed, layout, args.tmp))
            )
            return
        else:
            layout = args.worker.split("-")[1]
            result = worker_tiled(args.n, args.genes, args.seed, layout, args.n_jobs, args.tmp)
        print("RESULT " + json.dumps(_finish(result)))
        return

    os.environ["SCALE_MEMORY_LIMIT"] = str(int(args.memory_limit_gib * 2**30))
    mem = total_memory()
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        scvi_dir = Path(tmp) / "scvi"
        pretrain_s = (
            pretrain(scvi_dir, args.genes, args.seed) if "scresidual" in args.methods else None
        )
        for n in args.sizes:
            for method in args.methods:
                common = ["--n", str(n), "--genes", str(args.genes), "--seed", str(args.seed)]
                dense_bytes = 4 * n * n
                if method == "dense-gcn" and 2 * dense_bytes > 0.6 * mem:
                    status = (
                        f"skipped: dense {n}x{n} float32 adjacency = {dense_bytes / 2**30:.0f} GiB "
                        f"(x2 for a working copy) > 60% of {mem / 2**30:.0f} GiB RAM"
                    )
                    res = {"status": status}
                elif method == "dense-gcn" or method in PEERS:
                    res = run_child(["--worker", method, *common], args.timeout)
                elif method in TILED:
                    layout = method.split("-")[1]
                    made = run_child(
                        ["--worker", f"store-{layout}", *common, "--tmp", tmp], args.timeout
                    )
                    extra = ["--n-jobs", str(args.n_jobs), "--tmp", tmp]
                    res = run_child(["--worker", method, *common, *extra], args.timeout)
                    if made["status"] == "ok":
                        res.setdefault("stages", {}).update(made["stages"])
                        res["stages"]["generate"]["note"] = "own process, not in the peaks"
                    shutil.rmtree(store_path(tmp, layout, n), ignore_errors=True)
                else:
                    res = run_child(
                        ["--worker", "scresidual", "--scvi", str(scvi_dir), *common], args.timeout
                    )
                results.append({"method": method, "n": n, **res})
                print_table(results[-1:])
                sys.stdout.flush()
    ok = {r["n"]: r for r in results if r["method"] == "scresidual" and r["status"] == "ok"}
    ratio = (
        ok[1_000_000]["end_to_end_s"] / ok[100_000]["end_to_end_s"]
        if 1_000_000 in ok and 100_000 in ok
        else None
    )
    summary = {
        "cpu_count": os.cpu_count(),
        "memory_limit_gib": args.memory_limit_gib,
        "n_jobs": args.n_jobs,
        "ram_gib": mem / 2**30,
        "epochs": EPOCHS,
        "genes": args.genes,
        "scvi_pretrain_s": pretrain_s,
        "source": "SCVI (scvi-tools) pretrained on a generated 10^4-cell slide, 5 epochs, frozen",
        "t_1e6_over_t_1e5": ratio,
        "tiled_t_1e7_over_t_1e6": tiled_ratios(results),
        "results": results,
    }
    print()
    print_table(results)
    if ratio is not None:
        print(f"t(1e6)/t(1e5) = {ratio:.1f}")
    for method, r in summary["tiled_t_1e7_over_t_1e6"].items():
        print(f"{method}: t(1e7)/t(1e6) = {r:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
