"""Key names shared across scresidual, kept in one place (as squidpy does)."""

SPATIAL_KEY = "spatial"
"""``obsm`` key of the spatial coordinates."""

CONNECTIVITIES_KEY = "spatial_connectivities"
"""``obsp`` key of the spatial neighbour graph (squidpy convention)."""

DISTANCES_KEY = "spatial_distances"
"""``obsp`` key of the spatial neighbour distances (squidpy convention)."""

SOURCE_KEY = "X_source"
"""Default ``obsm`` key for embeddings of a frozen source model."""

PCA_KEY = "X_pca"
"""``obsm`` key of the target-side PCA features."""

COUNTS_LAYER = "counts"
"""Layer holding raw counts, when ``X`` has been normalised."""

REGION_KEY = "region"
"""``obs`` key of region labels in the embedded data sets."""

TRAIN_SUFFIX = "_train"
"""Suffix of the boolean ``obs`` column marking training spots (see :func:`train_key`)."""

DEFAULT_GRAPH = "delaunay"
"""Default spatial graph of the region classifier (CellCharter's: Delaunay, long links dropped)."""

LONG_LINK_PERCENTILE = 99.0
"""Delaunay edges longer than this percentile of all edge lengths are dropped (CellCharter's)."""

DEFAULT_N_HOPS = 3
"""Default number of neighbour rings averaged around each spot. Leave-one-slide-out
(``benchmarks/heldout_slides.py``) prefers 4 or 5; see :data:`DEFAULT_GRADIENTS` for why the
default is unchanged for now."""

DEFAULT_GRADIENTS = False
"""Whether the region classifier reads neighbour gradients (blocks it may refuse) by default.
Leave-one-slide-out (``benchmarks/heldout_slides.py``) chooses them on every held-out slide;
they stay off by default for now: with them and 4 rings, random labels' 10% macro-F1 rises
faster than the suggestions' (see docs/benchmarks.md)."""

DEFAULT_SIDE_FEATURES: tuple[str, ...] = ()
"""The region classifier's default side features (target-side inputs it may refuse)."""

ENCODER_SOLVERS = {"linear": "newton-cg", "hops": "adam"}
"""Residual encoders of the region classifier and the solver that fits each: ``linear`` (ring
means; the exact engine, logistic regressions by sklearn's ``newton-cg``) or ``hops`` (a
SIGN-style graph encoder; the gradient engine, Adam through Lightning)."""

DEFAULT_ENCODER = "linear"

FEATURE_KINDS = ("pca", "neighbourhood-pca", "obsm")
"""Target-side feature specs of the region classifier (``'obsm:KEY'`` takes a key)."""

SETUP_KEY = "_scresidual_setup"
"""``uns`` key where ``SpatialRegionClassifier.setup_anndata`` registers an AnnData (its
setup arguments and fitted feature maps, plain data), as scvi-tools' ``setup_anndata`` does."""

SUGGEST_STRATEGIES = ("diverse", "uncertainty", "random")
"""Strategies of :func:`scresidual.tl.suggest_labels`, the default first."""

MIN_GENE_OVERLAP = 0.5
"""Default smallest fraction of a model's genes that must be in the query (the rest are
zero-filled): one default for scvi sources, PCA features and ``TorchSource`` gene lists."""


def pred_key(labels_key: str) -> str:
    """``obs`` key of predicted labels for ``labels_key``."""
    return f"{labels_key}_pred"


def proba_key(labels_key: str) -> str:
    """``obsm`` key of class probabilities for ``labels_key``."""
    return f"{labels_key}_proba"


def proba_classes_key(labels_key: str) -> str:
    """``uns`` key of the class order of the ``proba_key`` columns."""
    return f"{labels_key}_proba_classes"


def uncertainty_key(labels_key: str) -> str:
    """``obs`` key of per-cell uncertainty: 1 - the highest calibrated class probability."""
    return f"{labels_key}_uncertainty"


def set_key(labels_key: str) -> str:
    """``obs`` key of conformal prediction sets: classes joined by ``'|'``, most probable first."""
    return f"{labels_key}_set"


def set_size_key(labels_key: str) -> str:
    """``obs`` key of the number of classes in each conformal prediction set."""
    return f"{labels_key}_set_size"


def calibration_key(labels_key: str) -> str:
    """``uns`` key of how probabilities were calibrated and sets made (temperature, level)."""
    return f"{labels_key}_calibration"


def suggested_key(labels_key: str) -> str:
    """``obs`` key marking (True) the cells suggested for labelling next."""
    return f"{labels_key}_suggested"


def train_key(labels_key: str) -> str:
    """``obs`` key of the boolean column marking the spots whose labels were trained on.

    ``fit --output`` and the demo write it next to the predictions, so a figure or a score can
    tell training spots from predicted ones.
    """
    return f"{labels_key}{TRAIN_SUFFIX}"
