"""The main job on the embedded lymph node: pretrain, freeze, fit four arms, predict, plot."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ._constants import REGION_KEY, SOURCE_KEY, train_key
from ._io import atomic_path

logger = logging.getLogger(__name__)

# (spots per side, reference cells, scVI epochs, REFINE epochs): full, and --quick, which
# checks an installation in well under a minute.
_SIZES = {False: (56, 3000, 40, 200), True: (30, 500, 5, 20)}


def run_demo(
    out: str | Path = "scresidual_demo",
    *,
    seed: int = 0,
    label_fraction: float = 0.1,
    n_jobs: int | None = None,
    quick: bool = False,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Run the end-to-end demo and write its outputs to ``out``.

    1. Generate the embedded lymph-node slides and the dissociated reference.
    2. Pretrain an SCVI source on the reference (no coordinates), save it, freeze it.
    3. Keep ``label_fraction`` of the labels on slide 1; fit refine, scratch, linear-probe
       and adapter on it.
    4. Predict the unlabelled spots of slide 1 and the whole held-out slide 2.
    5. Write ``predictions.h5ad`` (both slides, REFINE predictions in ``obs['region_pred']``,
       training spots marked in ``obs['region_train']``), ``results.csv`` and figures
       (region maps, confusion matrix, arm comparison).

    ``n_jobs`` worker processes fit the cross-fitted folds (default: one per core);
    ``quick`` uses smaller slides and fewer epochs (an installation check).

    Returns the results table (accuracy and macro-F1 per arm and evaluation set).
    """
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    from . import datasets, pl, tl
    from ._settings import progress_enabled
    from .sources import embed, pretrain_scvi

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    spots, n_cells, scvi_epochs, max_epochs = _SIZES[quick]
    slides = datasets.lymph_node(n_slides=2, seed=seed, spots_per_side=spots)
    reference = datasets.lymph_node_reference(n_cells=n_cells, seed=seed)
    print(f"[1/4] data: {slides.n_obs} spots on 2 slides, reference of {reference.n_obs} cells")
    source = pretrain_scvi(
        reference,
        out / "source_scvi",
        n_latent=10,
        max_epochs=scvi_epochs,
        seed=seed,
        overwrite=True,  # the demo's own folder: a rerun replaces it
        progress=progress_enabled(progress),  # scvi's trainer reads None as True
    )
    print(f"[2/4] SCVI source pretrained on the reference and frozen ({time.time() - t0:.0f} s)")
    embed(slides, source, key_added=SOURCE_KEY, progress=progress)
    train = slides[slides.obs["slide"] == "slide1"].copy()
    held_out = slides[slides.obs["slide"] == "slide2"].copy()
    rng = np.random.default_rng(seed)
    keep = rng.random(train.n_obs) < label_fraction
    train.obs["region_given"] = train.obs[REGION_KEY].astype(object).where(keep, None)
    results, models = tl.compare_arms(
        train,
        labels_key="region_given",
        truth_key=REGION_KEY,
        test={"held-out slide": held_out},
        sources=[f"obsm:{SOURCE_KEY}"],
        seed=seed,
        max_epochs=max_epochs,
        n_jobs=n_jobs,
        progress=progress,
    )
    print(f"[3/4] four arms fitted on {int(keep.sum())} labelled spots ({time.time() - t0:.0f} s)")
    refine = models["refine"]
    for slide, given in ((train, keep), (held_out, False)):
        refine.predict(slide, key_added=REGION_KEY)
        slide.obs[train_key(REGION_KEY)] = np.full(slide.n_obs, False) | given
    both = ad.concat([train, held_out], merge="same", uns_merge="first")
    with atomic_path(out / "predictions.h5ad") as tmp:
        both.write_h5ad(tmp)
    results.to_csv(out / "results.csv", index=False)
    pl.regions(train, labels_key=REGION_KEY, save=str(out / "regions_slide1.png"))
    pl.regions(held_out, labels_key=REGION_KEY, save=str(out / "regions_held_out.png"))
    pl.confusion(held_out, labels_key=REGION_KEY, save=str(out / "confusion_held_out.png"))
    pl.arms(results, save=str(out / "arms.png"))
    import matplotlib.pyplot as plt

    plt.close("all")
    print(f"[4/4] predictions and figures written to {out}/ ({time.time() - t0:.0f} s)")
    return results
