"""The peers a spatial lab would use instead: CellCharter + LR and BANKSY + LR.

Both read the same frozen embedding / expression as scresidual and end in the same tuned
logistic regression: standardise → ``LogisticRegression(class_weight="balanced")`` with
``C`` ∈ {0.01, 0.1, 1, 10} chosen by 5-fold stratified CV on macro-F1. Unsupervised
clustering (a Gaussian mixture with as many components as there are regions) on each
peer's features gives the ARI context. Installed with ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import warnings

import numpy as np

PEER_C = (0.01, 0.1, 1.0, 10.0)
BANKSY_LAMBDA, BANKSY_K, BANKSY_PCS = 0.8, 15, 20


def tuned_lr(X_train, y_train, seed: int):
    """Standardise + logistic regression with C by 5-fold stratified CV (macro-F1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.unique(y_train, return_counts=True)[1]
    k = int(min(5, counts.min())) if counts.min() >= 2 else 2
    pipe = make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000)
    )
    grid = GridSearchCV(
        pipe,
        {"logisticregression__C": list(PEER_C)},
        scoring="f1_macro",
        cv=StratifiedKFold(k, shuffle=True, random_state=seed),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return grid.fit(X_train, y_train)


def cellcharter_features(a, *, use_rep: str, library: str | None, n_layers: int = 3):
    """CellCharter's recipe: Delaunay graph, long links removed, neighbour-layer means."""
    import cellcharter as cc
    import squidpy as sq

    b = a.copy()
    sample_key = library
    if library is None:
        b.obs["_sample"] = "0"
        sample_key = "_sample"
    b.obs[sample_key] = b.obs[sample_key].astype("category")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sq.gr.spatial_neighbors(b, coord_type="generic", delaunay=True, library_key=sample_key)
        cc.gr.remove_long_links(b)
        cc.gr.aggregate_neighbors(b, n_layers=n_layers, use_rep=use_rep, sample_key=sample_key)
    return np.asarray(b.obsm["X_cellcharter"], dtype=np.float64)


def banksy_features(a, *, library: str | None, seed: int = 0):
    """BANKSY (λ 0.8, 15 neighbours, AGF order 1) on log-normalised values, per slide."""
    import scanpy as sc
    from banksy.embed_banksy import generate_banksy_matrix
    from banksy.initialize_banksy import initialize_banksy

    groups = (
        [np.arange(a.n_obs)]
        if library is None
        else [np.flatnonzero((a.obs[library] == v).to_numpy()) for v in a.obs[library].unique()]
    )
    out = None
    for idx in groups:
        b = a[idx].copy()
        sc.pp.normalize_total(b)
        sc.pp.log1p(b)
        b.obs["x"], b.obs["y"] = b.obsm["spatial"][:, 0], b.obsm["spatial"][:, 1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):  # BANKSY prints its progress
                bd = initialize_banksy(
                    b,
                    ("x", "y", "spatial"),
                    BANKSY_K,
                    nbr_weight_decay="scaled_gaussian",
                    max_m=1,
                    plt_edge_hist=False,
                    plt_nbr_weights=False,
                    plt_agf_angles=False,
                    plt_theta=False,
                )
                _, M = generate_banksy_matrix(b, bd, [BANKSY_LAMBDA], 1, verbose=False)
        X = M.X.toarray() if hasattr(M.X, "toarray") else np.asarray(M.X)
        if out is None:
            out = np.zeros((a.n_obs, X.shape[1]))
        out[idx] = X
    return out


def banksy_pca(B_train, B_test, seed: int):
    """BANKSY's PCA (20 components), fitted on the training cells."""
    from sklearn.decomposition import PCA

    pca = PCA(BANKSY_PCS, random_state=seed).fit(B_train)
    return pca.transform(B_train), pca.transform(B_test)


def cluster_ari(X, truth, seed: int = 0) -> float:
    """ARI of a Gaussian mixture with one component per region (CellCharter's clustering)."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler

    n = len(np.unique(truth))
    Xs = StandardScaler().fit_transform(X)
    labels = GaussianMixture(n, covariance_type="diag", random_state=seed).fit_predict(Xs)
    return float(adjusted_rand_score(truth, labels))
