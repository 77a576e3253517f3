"""Pretrained sources train through ``scresidual.train``: seeded, and no loop of their own."""

import ast
from pathlib import Path

import anndata as ad
import numpy as np

from scresidual.sources import pretrain_autoencoder, pretrain_mlp_source, source_outputs

SOURCES = Path(__file__).resolve().parents[1] / "scresidual" / "sources"


def test_sources_hold_no_training_loop():
    """Optimiser steps, backward passes and optimisers live in scresidual.train only."""
    found = []
    for path in sorted(SOURCES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else None
            if name in {"step", "backward", "zero_grad", "optim"}:
                found.append(f"{path.name}:{node.lineno} .{name}")
    assert not found, found


def test_autoencoder_source_is_seeded():
    rng = np.random.default_rng(0)
    X = rng.poisson(np.exp(rng.normal(size=(1, 25))), (240, 25)).astype(np.float32)
    adata = ad.AnnData(X)

    def fit(seed):
        src = pretrain_autoencoder(
            X, transform="log1p", n_latent=4, max_epochs=6, patience=2, seed=seed
        )
        return src.validation_mse_, src.embed(adata, progress=False)

    (mse, Z), (mse_again, Z_again), (_, Z_other) = fit(1), fit(1), fit(2)
    assert np.isfinite(mse) and mse == mse_again
    np.testing.assert_array_equal(Z, Z_again)
    assert Z.shape == (240, 4) and not np.allclose(Z, Z_other)
    no_val = pretrain_autoencoder(X, n_latent=3, max_epochs=2, validation_size=0)
    assert np.isnan(no_val.validation_mse_)


def test_mlp_source_is_seeded_and_learns():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 10)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)

    def fit(seed):
        model = pretrain_mlp_source(x, y, n_classes=2, n_hidden=16, n_out=8, epochs=30, seed=seed)
        return source_outputs(model, x)[1]

    logits = fit(3)
    np.testing.assert_array_equal(logits, fit(3))
    assert (logits.argmax(1) == y).mean() > 0.9
    assert not np.allclose(logits, fit(4))
