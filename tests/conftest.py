import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def file_hash(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def small_slides():
    """Two small embedded lymph-node slides (counts, coordinates, regions)."""
    from scresidual.datasets import lymph_node

    return lymph_node(n_slides=2, seed=1, spots_per_side=30)


@pytest.fixture(scope="session")
def toy_views():
    """Flat features that decide the label, an informative source and a useless one."""
    rng = np.random.default_rng(0)
    n = 1200
    y = rng.integers(0, 3, n)
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    feats[:, 0] += 1.5 * y  # the residual input carries the label weakly
    good = np.eye(3, dtype=np.float32)[y] * 2 + rng.normal(scale=0.5, size=(n, 3)).astype(
        np.float32
    )
    useless = rng.normal(size=(n, 32)).astype(np.float32)
    return {"y": y.astype(str), "feats": feats, "good": good, "useless": useless}
