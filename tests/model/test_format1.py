"""Model folders written before the engines were split (format 1) load and predict the same."""

import json
from pathlib import Path

import anndata as ad
import numpy as np

from scresidual.model import ResidualModel, SpatialRegionClassifier

DATA = Path(__file__).parent / "data" / "format1"  # see its README.md


def test_format1_exact_folders_load_predict_the_same_and_resave_as_a_head(tmp_path):
    slide = ad.read_h5ad(DATA / "slide.h5ad")
    expected = np.load(DATA / "expected.npz")
    for name in ("exact_refine", "exact_scratch"):
        assert json.loads((DATA / name / "residual_model.json").read_text())["format"] == 1
        model = SpatialRegionClassifier.load(DATA / name, progress=False)
        core = model.residual_model_
        assert core.config.solver == "newton-cg" and core.network is None  # saved as "lbfgs"
        proba = model.predict_proba(slide).to_numpy()
        raw = model.predict_proba(slide, calibrated=False).to_numpy()
        np.testing.assert_array_equal(proba.argmax(1), expected[f"{name}_proba"].argmax(1))
        np.testing.assert_allclose(proba, expected[f"{name}_proba"], atol=1e-5)
        np.testing.assert_allclose(raw, expected[f"{name}_raw"], atol=1e-5)
        assert not np.allclose(raw, proba, atol=1e-3)  # the temperatures were kept
        model.save(tmp_path / name)
        meta = json.loads((tmp_path / name / "residual_model.json").read_text())
        assert meta["format"] == 2 and meta["exact_head"]["arm"] == core.chosen_arm_
        assert not (tmp_path / name / "residual_model.pt").exists()
        again = SpatialRegionClassifier.load(tmp_path / name, progress=False)
        np.testing.assert_array_equal(again.predict_proba(slide).to_numpy(), proba)
        np.testing.assert_array_equal(again.predict_proba(slide, calibrated=False).to_numpy(), raw)


def test_format1_gradient_folder_loads_and_predicts_the_same():
    slide = ad.read_h5ad(DATA / "slide.h5ad")
    views = {"src": slide.obsm["X_src"], "feat": slide.obsm["X_feat"]}
    core = ResidualModel.load(DATA / "gradient_core", progress=False)
    assert core.config.solver == "adam" and core.options.max_epochs == 5
    proba = core.predict_proba(views)
    expected = np.load(DATA / "expected.npz")["gradient_core_proba"]
    np.testing.assert_array_equal(proba.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(proba, expected, atol=1e-6)
