"""Target-side PCA features (scresidual.pp.PCAFeatures)."""

import numpy as np
import pytest
from anndata import AnnData

from scresidual import ScResidualError, pp


def _counts(seed=0, n=120, g=40):
    rng = np.random.default_rng(seed)
    return AnnData(rng.poisson(3.0, (n, g)).astype(np.float32))


def test_counts_are_log_normalised_and_scaled_values_used_as_they_are():
    a = _counts()
    assert pp.PCAFeatures.fit(a, n_comps=5).lognorm
    scaled = AnnData((a.X - a.X.mean(0)) / a.X.std(0))  # negatives, not whole numbers
    pca = pp.PCAFeatures.fit(scaled, n_comps=5)
    assert not pca.lognorm
    # used as they are: the projection's variances are the covariance's top eigenvalues
    top = np.linalg.eigvalsh(np.cov(scaled.X, rowvar=False))[::-1][:5]
    np.testing.assert_allclose(pca.transform(scaled).var(0, ddof=1), top, rtol=1e-3)


def test_counts_with_a_negative_value_are_refused_at_fit_and_at_transform():
    a = _counts()
    pca = pp.PCAFeatures.fit(a, n_comps=5)
    bad = a.copy()
    bad.X[0, 0] = -2
    for call in (lambda: pp.PCAFeatures.fit(bad), lambda: pca.transform(bad)):
        with pytest.raises(ScResidualError, match="1 negative value"):
            call()


def test_a_neighbourhood_pca_is_fitted_on_the_neighbour_means(tmp_path):
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n = 200
    region = np.repeat([0, 1], n // 2)  # a signal in 3 genes, weak in each cell
    X = rng.normal(size=(n, 30)).astype(np.float32)
    X[:, :3] += 0.6 * region[:, None]
    a = AnnData(X)
    # neighbours: 8 others of the same region, so neighbour means average the noise away
    rows = np.repeat(np.arange(n), 8)
    cols = np.array([rng.choice(np.flatnonzero(region == region[i]), 8) for i in range(n)]).ravel()
    conn = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    plain = pp.PCAFeatures.fit(a, n_comps=2)
    smooth = pp.PCAFeatures.fit(a, n_comps=2, neighbours=conn)
    # the first component: the region's genes once the noise is averaged, not before
    assert np.abs(smooth.components[0, :3]).sum() > 2 * np.abs(plain.components[0, :3]).sum()
    # the same genes are projected cell by cell, so only the basis differs
    np.testing.assert_allclose(
        smooth.transform(a), (X - smooth.mean) @ smooth.components.T, rtol=1e-4, atol=1e-4
    )
    a.write_h5ad(tmp_path / "a.h5ad")
    backed = __import__("anndata").read_h5ad(tmp_path / "a.h5ad", backed="r")
    with pytest.raises(ScResidualError, match="load the slide into memory"):
        pp.PCAFeatures.fit(backed, n_comps=2, neighbours=conn)
