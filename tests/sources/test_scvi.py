"""Frozen scvi-tools sources and gene alignment."""

import numpy as np
import pytest

from scresidual import ScResidualError
from scresidual.sources import ScviSource, align_genes, embed


def test_scvi_source_matches_genes(small_slides, scvi_dir):
    src = ScviSource.load(scvi_dir)
    a = small_slides[:50].copy()
    shuffled = a[:, np.random.default_rng(0).permutation(a.n_vars)].copy()
    np.testing.assert_allclose(src.embed(a), src.embed(shuffled), atol=1e-5)
    dropped = a[:, 20:].copy()  # missing genes are zero-filled
    assert src.embed(dropped).shape == (50, src.n_latent)
    other = a.copy()
    other.var_names = [f"g{i}" for i in range(a.n_vars)]
    with pytest.raises(ScResidualError, match="genes of the"):
        src.embed(other)
    assert embed(a, src, copy=True).obsm["X_source"].shape == (50, 5)


def test_scvi_source_is_built_once_and_matches_scvi_tools(small_slides, scvi_dir, tmp_path):
    import shutil

    import scvi

    a = small_slides[:60].copy()
    q = scvi.model.SCVI.prepare_query_anndata(a.copy(), str(scvi_dir), inplace=False)
    expected = scvi.model.SCVI.load(
        str(scvi_dir), adata=q, accelerator="cpu"
    ).get_latent_representation(q)
    folder = tmp_path / "scvi"
    shutil.copytree(scvi_dir, folder)
    src = ScviSource.load(folder)
    (folder / "model.pt").unlink()  # embedding never reads the folder again
    np.testing.assert_allclose(src.embed(a), expected, atol=1e-6)
    parts = [src.embed(a[:25].copy()), src.embed(a[25:].copy())]
    np.testing.assert_allclose(np.vstack(parts), expected, atol=1e-6)


def test_align_genes_reorders_and_zero_fills(small_slides):
    a = small_slides[:5].copy()
    genes = [a.var_names[3], "NOT_A_GENE", a.var_names[0]]
    X = align_genes(a, genes, min_overlap=0.5).toarray()
    dense = a.X.toarray()
    np.testing.assert_array_equal(X[:, 0], dense[:, 3])
    np.testing.assert_array_equal(X[:, 1], 0)
    np.testing.assert_array_equal(X[:, 2], dense[:, 0])


def test_align_genes_refuses_low_overlap_without_claiming_to_zero_fill(small_slides, caplog):
    a = small_slides[:5].copy()
    with caplog.at_level("DEBUG", logger="scresidual"):
        with pytest.raises(ScResidualError, match=r"0 of 2 genes .* lower min_overlap="):
            align_genes(a, ["NOT_A_GENE", "NOR_THIS"])
    assert "zero-filled" not in caplog.text


def test_pretrain_scvi_refuses_negative_or_missing_counts_before_training(small_slides, tmp_path):
    from scresidual.sources import pretrain_scvi

    a = small_slides[:200].copy()
    a.X = a.X.toarray() if hasattr(a.X, "toarray") else np.array(a.X)
    a.X[3, 4] = -1.0
    with pytest.raises(ScResidualError, match=r"^adata.X has 1 negative value\(s\).*--layer"):
        pretrain_scvi(a, tmp_path / "m", max_epochs=1, progress=False)
    with pytest.raises(ScResidualError, match="layer 'umi' not found"):
        pretrain_scvi(a, tmp_path / "m", layer="umi", max_epochs=1, progress=False)
    assert not (tmp_path / "m").exists()
