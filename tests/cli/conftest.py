import numpy as np
import pytest

from scresidual.cli import main


@pytest.fixture()
def slide_file(small_slides, tmp_path):
    """Slide 1 of the small slides as an .h5ad, 30% of it labelled in obs['label']."""
    a = small_slides[small_slides.obs["slide"] == "slide1"].copy()
    rng = np.random.default_rng(0)
    a.obs["label"] = a.obs["region"].astype(object).where(rng.random(a.n_obs) < 0.3, np.nan)
    path = tmp_path / "slide.h5ad"
    a.write_h5ad(path)
    return path


def run_cli(argv, capsys):
    """Run the command line in-process: (exit code, stdout, stderr)."""
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err
