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
def zarr_store(small_slides, tmp_path_factory):
    """A SpatialData with a table annotating circles (one per spot), written to .zarr."""
    import geopandas as gpd
    import spatialdata
    from shapely.geometry import Point
    from spatialdata.models import ShapesModel, TableModel

    a = small_slides[small_slides.obs["slide"] == "slide1"].copy()
    rng = np.random.default_rng(0)
    a.obs["train"] = a.obs["region"].astype(object).where(rng.random(a.n_obs) < 0.5, None)
    xy = a.obsm.pop("spatial")
    circles = gpd.GeoDataFrame(
        {"radius": np.full(a.n_obs, 0.5)},
        geometry=[Point(x, y) for x, y in xy],
        index=np.arange(a.n_obs),
    )
    shapes = ShapesModel.parse(circles)
    a.obs["spots"] = "spots"
    a.obs["instance"] = np.arange(a.n_obs)
    a.obs = a.obs.astype({"train": "category", "region": "category"})
    table = TableModel.parse(a, region="spots", region_key="spots", instance_key="instance")
    sdata = spatialdata.SpatialData(shapes={"spots": shapes}, tables={"table": table})
    path = tmp_path_factory.mktemp("sd") / "slide.zarr"
    sdata.write(path)
    return path


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


@pytest.fixture(scope="session")
def slides(small_slides):
    """Both small slides with 30% of the spots labelled in obs['train']."""
    a = small_slides.copy()
    rng = np.random.default_rng(0)
    a.obs["train"] = a.obs["region"].astype(object).where(rng.random(a.n_obs) < 0.3, None)
    return a


@pytest.fixture(scope="session")
def scvi_dir(tmp_path_factory):
    """A small scVI model trained on the embedded reference (a frozen source)."""
    from scresidual.datasets import lymph_node_reference
    from scresidual.sources import pretrain_scvi

    ref = lymph_node_reference(n_cells=600, seed=0)
    path = tmp_path_factory.mktemp("src") / "scvi"
    pretrain_scvi(ref, path, n_latent=5, max_epochs=3, progress=False)
    return path
