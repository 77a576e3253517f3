"""Command line at scale: ``scresidual fit`` then ``scresidual predict`` on a ``.zarr``, by tiles.

For each size, the slide of ``benchmarks/scale.py``'s tiled pipeline (Xenium-like point cloud,
100 genes, 1% of the cells labelled at random) is generated block by block into a SpatialData
``.zarr`` (its own process, not timed); then, as a user runs them, in fresh processes::

    scresidual fit STORE --labels-key region --model-dir MODEL --graph knn:6 --n-hops 2 \\
        --tile-size 4500 --n-jobs 2 --quiet
    scresidual predict MODEL STORE --output STORE --tile-size 4500 --n-jobs 2 --quiet

(4500 units: about 200,000 cells a tile.) Each command runs under ``RLIMIT_AS``
(``--memory-limit-gib``, default 16) and ``--timeout``; reported per command: wall time
(imports included), the peak RSS of its own process (``/usr/bin/time``'s maximum resident
size) and the peak of it and its tile workers together (sampled every 0.2 s).

Usage::

    python benchmarks/scale_cli.py --sizes 1000000 10000000 \\
        --out benchmarks/results/scale_cli_1e7.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import MEMORY_LIMIT, TreePeak, run_child, store_path  # noqa: E402


def _limit(limit: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def timed(cmd: list[str], limit: int, timeout: float) -> dict:
    """Run ``cmd``: wall seconds, its own peak RSS and its process tree's, or why it stopped."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as rss:
        full = ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd]
        t = time.perf_counter()
        proc = subprocess.Popen(
            full,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_limit(limit),
        )
        tree = TreePeak(proc.pid)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            tree.stop()
            return {"status": f"stopped: time limit of {timeout:.0f} s"}
        wall = time.perf_counter() - t
        peak_tree = tree.stop()
        own = rss.read().strip().splitlines()
    if proc.returncode != 0:
        return {"status": f"failed (exit {proc.returncode}): {err.strip()[-400:]}"}
    return {
        "status": "ok",
        "seconds": wall,
        "peak_rss_gib": int(own[-1]) / 2**20 if own else None,
        "peak_tree_rss_gib": peak_tree / 2**30,
    }


def accuracy(store: Path) -> float:
    from scresidual.read.lazy import LazyTable

    obs = LazyTable.open(store, obs_columns=["region", "truth", "region_pred"]).obs
    unl = obs["region"].isna().to_numpy()
    pred = obs["region_pred"].astype(str).to_numpy()
    return float((pred[unl] == obs["truth"].astype(str).to_numpy()[unl]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--genes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile-size", type=float, default=4500)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--memory-limit-gib", type=float, default=MEMORY_LIMIT / 2**30)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scale_cli.json")
    args = parser.parse_args()
    limit = int(args.memory_limit_gib * 2**30)
    os.environ["SCALE_MEMORY_LIMIT"] = str(limit)
    cli = [sys.executable, "-m", "scresidual.cli"]
    tiles = ["--tile-size", str(args.tile_size), "--n-jobs", str(args.n_jobs), "--quiet"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            common = ["--n", str(n), "--genes", str(args.genes), "--seed", str(args.seed)]
            made = run_child(["--worker", "store-cloud", *common, "--tmp", tmp], args.timeout)
            row = {"n": n, "generate": made}
            store, model = store_path(tmp, "cloud", n), Path(tmp) / f"model_{n}"
            fit = [*cli, "fit", str(store), "--labels-key", "region", "--model-dir", str(model)]
            row["fit"] = timed(
                [*fit, "--graph", "knn:6", "--n-hops", "2", *tiles], limit, args.timeout
            )
            if row["fit"]["status"] == "ok":
                predict = [*cli, "predict", str(model), str(store), "--output", str(store)]
                row["predict"] = timed([*predict, *tiles], limit, args.timeout)
            if row.get("predict", {}).get("status") == "ok":
                row["end_to_end_s"] = row["fit"]["seconds"] + row["predict"]["seconds"]
                row["accuracy_unlabelled"] = accuracy(store)
            rows.append(row)
            print(json.dumps(row), flush=True)
            for path in (store, model):
                shutil.rmtree(path, ignore_errors=True)
    done = {r["n"]: r for r in rows if "end_to_end_s" in r}
    ratio = (
        done[10**7]["end_to_end_s"] / done[10**6]["end_to_end_s"]
        if 10**6 in done and 10**7 in done
        else None
    )
    summary = {
        "cpu_count": os.cpu_count(),
        "memory_limit_gib": args.memory_limit_gib,
        "tile_size": args.tile_size,
        "n_jobs": args.n_jobs,
        "genes": args.genes,
        "t_1e7_over_t_1e6": ratio,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"t(1e7)/t(1e6) = {ratio}" if ratio else "", f"wrote {args.out}")


if __name__ == "__main__":
    main()
