"""Make tests/model/data/format1 with scresidual 0924b14 (format-1 model folders)."""

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

import scresidual as sr
from scresidual.model import ResidualModel, SpatialRegionClassifier

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
a = sr.datasets.lymph_node(n_slides=1, seed=0, spots_per_side=20)
b = a.copy()
sc.pp.normalize_total(b)
sc.pp.log1p(b)
sc.pp.pca(b, n_comps=18, random_state=0)
Z = b.obsm["X_pca"].astype(np.float32)
rng = np.random.default_rng(0)
slide = ad.AnnData(
    obs=a.obs[["region"]].copy(),
    obsm={"spatial": a.obsm["spatial"].astype(np.float32), "X_src": Z[:, :8], "X_feat": Z[:, 8:]},
)
slide.obs["region"] = slide.obs["region"].astype(str)
slide.obs["train"] = slide.obs["region"].astype(object).where(rng.random(slide.n_obs) < 0.4, None)
slide.write_h5ad(out / "slide.h5ad", compression="gzip")
expected = {}
kw = dict(labels_key="train", sources=["obsm:X_src"], features=["obsm:X_feat"], graph="knn:6")
for name, model_kw, train_kw in [
    ("exact_refine", {}, {}),
    ("exact_scratch", {"arm": "scratch"}, {}),
]:
    s = slide.copy()
    SpatialRegionClassifier.setup_anndata(s, **kw)
    m = SpatialRegionClassifier(s, seed=0, **model_kw).train(progress=False, n_jobs=1, **train_kw)
    m.save(out / name)
    expected[f"{name}_proba"] = m.predict_proba(slide).to_numpy()
    expected[f"{name}_raw"] = m.predict_proba(slide, calibrated=False).to_numpy()
    print(name, m.chosen_arm_, slide.n_obs)
views = {"src": slide.obsm["X_src"], "feat": slide.obsm["X_feat"]}
mlp = {"feat": ("mlp", {"n_hidden": (8,), "n_out": 8})}
g = ResidualModel(sources=["src"], residuals=mlp, max_epochs=5, folds=2, n_jobs=1, progress=False)
g.fit(views, slide.obs["train"].to_numpy())
g.save(out / "gradient_core")
expected["gradient_core_proba"] = g.predict_proba(views)
print("gradient", g.chosen_arm_)
np.savez_compressed(out / "expected.npz", **{k: v.astype(np.float32) for k, v in expected.items()})
