"""What a :class:`ResidualModel` is, and which options each fitting engine reads.

:class:`ResidualConfig` holds the model's definition and the options both engines read (the
folds, the source shares, the guard, class weights, workers, seed). Options of one engine
only live in its own dataclass (:class:`._exact.ExactOptions`,
:class:`._gradient.GradientOptions`); passing one to a model fitted by the other engine is a
one-line error naming both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .._errors import ScResidualError
from ._exact import ExactOptions
from ._gradient import GradientOptions

SOLVERS = {"newton-cg": ExactOptions, "adam": GradientOptions}
"""Each solver and the options of its engine: ``"newton-cg"``, the exact engine (sklearn's
logistic regressions, :mod:`._exact`); ``"adam"``, the gradient engine (Lightning,
:mod:`._gradient`)."""

ENGINE_NAMES = {"newton-cg": "the exact engine", "adam": "the gradient engine"}

SOLVER_ALIASES = {"lbfgs": "newton-cg"}
"""Former solver names, still read (models saved before the exact solver was named for what
it runs: sklearn's ``newton-cg``)."""


@dataclass
class ResidualConfig:
    """A :class:`ResidualModel`'s definition and the fitting options both engines read.

    ``folds``, ``group_folds``, ``validation_size``, ``source_shares``, ``guard_z``,
    ``class_weight``, ``n_jobs`` and ``seed`` are documented in :class:`ResidualModel`.
    """

    arm: str = "refine"
    sources: list[str] = field(default_factory=list)
    residuals: dict[str, list] = field(default_factory=dict)  # name -> [encoder, kwargs]
    side_blocks: list[str] = field(default_factory=list)  # views of refusable blocks
    head: str = "linear"
    solver: str = "adam"
    guard: bool = True
    guard_z: float = 1.0
    folds: int | None = None
    group_folds: bool | str = "auto"
    validation_size: float = 0.2
    source_shares: tuple[float, ...] | None = None  # None: the solver's grid
    n_jobs: int | None = None
    class_weight: str | None = "balanced"
    seed: int = 0
    teacher: str | None = None
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    lora_rank: int = 8
    lora_alpha: float = 16.0


def _names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


ENGINE_OPTIONS = {
    solver: _names(SOLVERS[SOLVER_ALIASES.get(solver, solver)])
    for solver in (*SOLVERS, *SOLVER_ALIASES)
}
"""The options each solver's engine alone reads, by solver (former names included)."""

ALL_OPTIONS = frozenset({*_names(ResidualConfig), *_names(ExactOptions), *_names(GradientOptions)})
"""Every option a :class:`ResidualModel` takes, whichever engine reads it."""

TRAIN_OPTIONS = (
    "max_epochs",
    "lr",
    "probe_lr",
    "weight_decay",
    "source_weight_decay",
    "batch_size",
    "patience",
    "min_steps_per_epoch",
    "validation_size",
    "folds",
    "group_folds",
    "cv_repeats",
    "n_jobs",
)
"""Options that say how to train, not what the model is (``train()``'s, not the
constructor's, in :class:`SpatialRegionClassifier`)."""


def canonical_solver(solver: str) -> str:
    """``solver`` by its current name; an unknown one is a one-line error."""
    solver = SOLVER_ALIASES.get(solver, solver)
    if solver not in SOLVERS:
        raise ScResidualError(
            f"unknown solver {solver!r}; use 'newton-cg' (exact, linear arms) or 'adam'."
        )
    return solver


def split_options(options: dict, *, legacy: bool = False) -> tuple[dict, object]:
    """``options`` as :class:`ResidualConfig` fields and the solver's engine options.

    Another engine's option is an error naming both engines (``legacy``: dropped, as in
    model files written when every option was saved whatever the solver).
    """
    unknown = sorted(set(options) - ALL_OPTIONS)
    if unknown:
        raise ScResidualError(
            f"unknown option(s) {unknown}; see ResidualConfig and the engines' options "
            "(ExactOptions, GradientOptions)."
        )
    solver = canonical_solver(options.get("solver", ResidualConfig.solver))
    own = set(_names(SOLVERS[solver]))
    config = {k: v for k, v in options.items() if k in _names(ResidualConfig)}
    others = sorted(set(options) - own - set(config))
    if others and not legacy:
        other = next(s for s in SOLVERS if s != solver)
        raise ScResidualError(
            f"{', '.join(others)}: option(s) of {ENGINE_NAMES[other]} (solver={other!r}), which "
            f"{ENGINE_NAMES[solver]} (solver={solver!r}) does not read; drop them or fit with "
            f"solver={other!r} (in the spatial model: encoder='hops' or 'linear')."
        )
    config["solver"] = solver
    return config, SOLVERS[solver](**{k: v for k, v in options.items() if k in own})


def check_side_blocks(config: ResidualConfig) -> None:
    """Side blocks must be source or residual views, fitted by the exact engine."""
    config.side_blocks = list(config.side_blocks)
    views = [*config.sources, *config.residuals]
    unknown = [k for k in config.side_blocks if k not in views]
    if unknown:
        raise ScResidualError(
            f"side_blocks {unknown} are not views of the model ({views}); name source or "
            "residual views."
        )
    for branch, names in (("source", config.sources), ("residual", config.residuals)):
        if names and set(names) <= set(config.side_blocks):
            raise ScResidualError(
                f"every {branch} view is a side block; a side block joins the other {branch} "
                "views, so keep at least one out of side_blocks."
            )
    if config.side_blocks and config.solver != "newton-cg":
        raise ScResidualError(
            "side blocks (the spatial model's gradients=True) are fitted by the exact engine "
            "only; use solver='newton-cg' (the linear encoder) or drop them."
        )


def check_trainer_kwargs(solver: str, trainer_kwargs: dict) -> None:
    """The exact engine runs sklearn on the CPU: refuse a Lightning device or strategy."""
    if solver != "newton-cg":
        return
    bad = {
        k: v
        for k, v in trainer_kwargs.items()
        if v not in ("auto", "cpu", 1) or (k == "strategy" and v != "auto")
    }
    if bad:
        raise ScResidualError(
            f"{', '.join(f'{k}={v!r}' for k, v in bad.items())}: Lightning options of the "
            "gradient engine; the exact engine (solver='newton-cg') fits on the CPU: drop them."
        )
