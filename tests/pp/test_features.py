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
