"""The ``scresidual`` command line: demo, pretrain-scvi, fit, predict, suggest, stress-test.

Bad input ends with one line ``error: …`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext, redirect_stdout
from pathlib import Path

from ._constants import (
    DEFAULT_ENCODER,
    DEFAULT_GRADIENTS,
    DEFAULT_GRAPH,
    DEFAULT_N_HOPS,
    ENCODER_SOLVERS,
    FEATURE_KINDS,
    MIN_GENE_OVERLAP,
    SUGGEST_STRATEGIES,
    TRAIN_SUFFIX,
    train_key,
)
from ._errors import ScResidualError

ARM_CHOICES = ("refine", "scratch", "linear-probe", "adapter")
PCA_SAMPLE = 50_000
"""Cells a tiled fit reads to set the model up (the PCA fits on at most as many)."""
TRUST_HELP = (
    "let scvi sources hold arbitrary Python objects (loading them can run code): only for "
    "model folders from people you trust"
)

NO_SOURCE_WARNING = (
    "WARNING: no --source: fitting the spatial residual alone (arm 'scratch', no frozen "
    "source); add one with --source scvi:DIR (make DIR with `scresidual pretrain-scvi "
    "SLIDE.h5ad --out DIR`) or --source obsm:KEY."
)

# Python keyword arguments named in messages whose CLI flag is not their dashed spelling.
_KWARG_FLAGS = {"min_overlap": "--min-gene-overlap", "table_key": "--table"}
_KWARG = re.compile(r"\b([a-z][a-z0-9_]*)=(?:'([^']*)'|True\b|(?=[\s.,;)]|$))")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every option's help; epilog examples kept as written.

    Required options have no default, and for a ``None`` default the help says what it means.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def _subcommand(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=_HelpFormatter,
    )


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print only warnings and errors: no progress bars, no result lines",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scresidual",
        description="Extend a frozen single-cell model with spatial (and other) signals: REFINE.",
        epilog="run `scresidual COMMAND --help` for a command's options and an example",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = _subcommand(
        sub,
        "demo",
        "run the main job on the embedded lymph-node data (about 2-3 min on 2 cores)",
        "scresidual demo --out scresidual_demo",
    )
    demo.add_argument("--out", default="scresidual_demo", help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="random seed (data, labels, training)")
    _add_n_jobs(demo)
    demo.add_argument(
        "--quick",
        action="store_true",
        help="smaller slides, fewer epochs: checks the installation, not the method",
    )
    _add_quiet(demo)

    pre = _subcommand(
        sub,
        "pretrain-scvi",
        "pretrain an scVI model on a slide's counts (no labels, no coordinates), to use "
        "frozen with `fit --source scvi:DIR`",
        "scresidual pretrain-scvi slide.h5ad --out scvi_source/ && scresidual fit slide.h5ad "
        "--labels-key region --model-dir model/ --source scvi:scvi_source/",
    )
    pre.add_argument(
        "input", help="slide or dissociated reference with raw counts: .h5ad, .zarr or a table"
    )
    _add_table(pre)
    _add_coordinates(pre)
    pre.add_argument("--out", required=True, help="folder to write the scvi-tools model to")
    pre.add_argument("--layer", default=None, help="layer with raw counts (default: X)")
    pre.add_argument(
        "--batch-key", default=None, help="obs column of batches, e.g. slides (default: one batch)"
    )
    pre.add_argument("--n-latent", type=int, default=10, help="latent dimensions")
    pre.add_argument(
        "--max-epochs",
        type=int,
        default=100,
        help="most training epochs; training stops earlier once the validation ELBO has not "
        "improved for 10 epochs (the epochs run are printed)",
    )
    pre.add_argument("--seed", type=int, default=0, help="random seed")
    pre.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    _add_quiet(pre)

    fit = _subcommand(
        sub,
        "fit",
        "fit a region classifier on a slide (.h5ad or SpatialData .zarr)",
        "scresidual fit slide.h5ad --labels-key region --model-dir model/ "
        "--source scvi:scvi_source/ --output slide_labelled.h5ad",
    )
    fit.add_argument(
        "input",
        help="training slide with raw counts: .h5ad with obsm['spatial'], or a "
        "SpatialData .zarr store (coordinates from its table or the shapes/points it annotates)",
    )
    _add_table(fit)
    _add_coordinates(fit)
    fit.add_argument(
        "--labels-key",
        required=True,
        help="obs column of labels; empty/NaN spots are unlabelled: predicted, not trained on",
    )
    _add_labels_csv(fit)
    fit.add_argument("--model-dir", required=True, help="folder to save the fitted model to")
    fit.add_argument(
        "--source",
        action="append",
        default=None,
        help="frozen source: obsm:KEY (a stored embedding) | scvi:DIR (an scvi-tools model "
        "folder, e.g. from `scresidual pretrain-scvi`) | none; repeatable (default: none, "
        "the spatial residual alone, i.e. scratch, with a warning)",
    )
    fit.add_argument(
        "--arm",
        choices=ARM_CHOICES,
        default="refine",
        help="refine: source + residual; scratch: residual only; linear-probe: source only; "
        "adapter: source through a small MLP",
    )
    fit.add_argument(
        "--features",
        action="append",
        default=None,
        help="input of the trainable residual: pca (of the log-normalised counts) | "
        "neighbourhood-pca (its components fitted on the spots' neighbour means) | obsm:KEY; "
        "repeatable (default: pca)",
    )
    fit.add_argument(
        "--graph",
        default=DEFAULT_GRAPH,
        help="spatial graph: delaunay (long links dropped) | knn:K | radius:R (coordinate "
        "units) | none",
    )
    fit.add_argument(
        "--n-hops",
        type=int,
        default=DEFAULT_N_HOPS,
        help="neighbour rings averaged around each spot (of the features and the sources)",
    )
    fit.add_argument(
        "--gradients",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_GRADIENTS,
        help="also read the neighbour gradients (BANKSY's azimuthal gradient) of the features "
        "and sources as blocks the fit weighs out of fold, refused where they do not help "
        "(linear encoder)",
    )
    fit.add_argument(
        "--encoder",
        choices=tuple(ENCODER_SOLVERS),
        default=DEFAULT_ENCODER,
        help="residual encoder: linear (ring means, fitted exactly) | hops (a graph encoder "
        "trained by gradient descent)",
    )
    fit.add_argument(
        "--library-key",
        default=None,
        help="obs column naming each spot's slide: one graph per slide (default: one slide)",
    )
    fit.add_argument("--spatial-key", default="spatial", help="obsm key of the coordinates")
    fit.add_argument(
        "--layer", default=None, help="layer with raw counts, for pca and scvi (default: X)"
    )
    fit.add_argument("--seed", type=int, default=0, help="random seed (splits, initialisation)")
    fit.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="most epochs per gradient-descent fit, early-stopped (default 200; --encoder "
        "hops, --arm adapter: the linear encoder is fitted exactly and refuses it)",
    )
    fit.add_argument(
        "--no-guard",
        action="store_true",
        help="keep the --arm even when scratch or the probe validates measurably better",
    )
    fit.add_argument(
        "--folds",
        type=int,
        default=None,
        help="validation folds (default: for the linear encoder, 5-fold cross-validation "
        "repeated 3 times below 1,000 labelled spots; for gradient-descent fits, 5 "
        "cross-fitted members below 1,000 labelled spots, else one 20%% split)",
    )
    fit.add_argument(
        "--min-gene-overlap",
        type=float,
        default=MIN_GENE_OVERLAP,
        help="smallest fraction of the genes of the PCA and of scvi sources a slide must have "
        "(missing genes are zero-filled)",
    )
    fit.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="worker processes for the cross-fitted folds, and with --tile-size or --scheduler "
        "for the tiles too (default: one per CPU core on CPU for the folds; 1 with tiles)",
    )
    fit.add_argument(
        "--tile-size",
        type=float,
        default=None,
        help="fit tile by tile, for slides larger than memory: the labels and coordinates are "
        "read, the expression one square tile of this side (coordinate units; ~200,000 cells "
        "is a good size) at a time with a halo of neighbours, the PCA fitted on a 50,000-cell "
        "sample; same model as without tiles (default: the whole slide is read)",
    )
    _add_scheduler(fit)
    fit.add_argument(
        "--output",
        default=None,
        help=f"also write the slide with predictions and obs['<labels-key>{TRAIN_SUFFIX}'] "
        "(training spots) to this .h5ad; for a .zarr input, the input store itself (adds them "
        "to its table in place) or a new .zarr (a copy) (default: not written)",
    )
    fit.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --model-dir (only a folder scresidual saved a model in)",
    )
    fit.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    _add_quiet(fit)

    pred = _subcommand(
        sub,
        "predict",
        "label a slide with a fitted model",
        "scresidual predict model/ other_slide.h5ad --output other_slide_labelled.h5ad",
    )
    pred.add_argument("model_dir", help="folder written by `scresidual fit --model-dir`")
    pred.add_argument(
        "input", help="slide to label, .h5ad (never modified) or SpatialData .zarr store"
    )
    _add_table(pred)
    _add_coordinates(pred)
    pred.add_argument(
        "--output",
        required=True,
        help="output .h5ad: the slide with obs['<labels-key>_pred'] and probabilities; for a "
        ".zarr input, the input store itself (adds them to its table in place, atomically) or "
        "a new .zarr path (a copy)",
    )
    pred.add_argument(
        "--min-gene-overlap",
        type=float,
        default=None,
        help="smallest fraction of the model's genes the slide must have (default: the "
        "value the model was fitted with)",
    )
    pred.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    pred.add_argument(
        "--alpha",
        type=float,
        default=0.1,
        help="conformal sets cover the true region with probability 1 - alpha",
    )
    pred.add_argument(
        "--sets-method",
        choices=("lac", "aps"),
        default="lac",
        help="conformal score: lac (smallest sets) or aps (adaptive)",
    )
    pred.add_argument(
        "--tile-size",
        type=float,
        default=None,
        help="predict over square tiles of this side (coordinate units) with a halo of "
        "neighbours, reading one tile at a time: for slides larger than memory (default: no "
        "tiles; with --n-jobs or --scheduler, about 200,000 cells a tile)",
    )
    pred.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="worker processes predicting tiles at once (-1: one per CPU); implies tiles "
        "(default: 1)",
    )
    _add_scheduler(pred)
    _add_quiet(pred)

    sug = _subcommand(
        sub,
        "suggest",
        "suggest the unlabelled spots to label next (uncertain, spread out, rare classes first)",
        "scresidual suggest model/ slide.h5ad --n 50 --output suggestions.csv",
    )
    sug.add_argument("model_dir", help="folder written by `scresidual fit --model-dir`")
    sug.add_argument(
        "input",
        help="the slide being annotated, .h5ad (never modified) or SpatialData .zarr "
        "store (never modified), with the labels so far",
    )
    _add_table(sug)
    _add_coordinates(sug)
    sug.add_argument("--n", type=int, default=50, help="spots to suggest")
    sug.add_argument(
        "--output",
        required=True,
        help="CSV of the suggestions in the order picked: obs_name, x, y, prediction, "
        "probability (calibrated, of the prediction), margin_uncertainty (1 - (p1 - p2)), "
        "score (what --strategy ranked by)",
    )
    sug.add_argument(
        "--labels-key",
        default=None,
        help="obs column of the labels so far (default: the model's labels key)",
    )
    _add_labels_csv(sug)
    sug.add_argument(
        "--strategy",
        choices=SUGGEST_STRATEGIES,
        default="diverse",
        help="diverse: uncertain spots, rare classes boosted, spread over the tissue; "
        "uncertainty: the most uncertain; random",
    )
    sug.add_argument("--seed", type=int, default=0, help="random seed (same seed, same spots)")
    sug.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    _add_quiet(sug)

    # Listed for --help only: main() hands "stress-test …" to the stress-test parser.
    sub.add_parser(
        "stress-test",
        help="the paper's negative-transfer stress tests (image, text, tabular)",
        add_help=False,
    )
    for parser in sub.choices.values():
        parser.set_defaults(flags=frozenset(s for a in parser._actions for s in a.option_strings))
    return p


def _add_table(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--table",
        default=None,
        help="table of a .zarr input to use (default: its only table)",
    )


def _add_coordinates(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coordinates",
        default=None,
        help="the input is a counts table (CSV/TSV/Parquet, a cell id then one column per "
        "gene) and this file holds each cell's id, x and y (other columns join obs); read "
        "with scresidual.read.table (default: the input is an .h5ad or .zarr)",
    )


def _add_labels_csv(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--labels-csv",
        default=None,
        help="CSV of cell id -> label (a header row; as Loupe Browser, QuPath, napari and "
        "sr.pl.annotate's autosave write it) read into obs[--labels-key], replacing that "
        "column; cells it does not list are unlabelled (default: the labels are in the input)",
    )
    parser.add_argument(
        "--labels-column",
        default=None,
        help="label column of --labels-csv (default: its second column; required when it has "
        "more than two)",
    )


def _add_scheduler(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        default=None,
        help="address of a Dask scheduler (tcp://host:8786): tiles run on its workers, which "
        "must see the input file; implies tiles (default: none, tiles run on this machine)",
    )


def _add_n_jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="worker processes for the cross-fitted folds (default: one per CPU core on CPU)",
    )


def _cli_message(message: str, flags: frozenset[str]) -> str:
    """Name CLI flags (``--spatial-key X``) where a message names keywords (``spatial_key='X'``)."""

    def flag(match: re.Match) -> str:
        name = _KWARG_FLAGS.get(match[1], "--" + match[1].replace("_", "-"))
        if name not in flags:
            return match[0]
        return f"{name} {match[2]}" if match[2] else name

    return _KWARG.sub(flag, message)


@contextmanager
def _flag(name: str) -> Iterator[None]:
    """Prefix a check's error with the CLI flag it is about."""
    try:
        yield
    except ScResidualError as err:
        raise ScResidualError(f"{name}: {err}") from err


def _check_positive(*flag_values: tuple[str, int | None]) -> None:
    """Raise for a count below 1 (``None`` stands for an automatic default)."""
    for flag, value in flag_values:
        if value is not None and value < 1:
            raise ScResidualError(f"{flag} must be at least 1, got {value}.")


def _check_fraction(flag: str, value: float | None) -> None:
    if value is not None and not 0 <= value <= 1:
        raise ScResidualError(f"{flag} must be a fraction in [0, 1], got {value}.")


def _check_source(spec: str, adata, args) -> None:
    from ._genes import check_gene_overlap
    from ._validate import check_obsm_key, parse_spec
    from .sources import ScviSource

    kind, value = parse_spec(spec, ("obsm", "scvi"), "source")
    if kind == "obsm":
        check_obsm_key(adata, value)
        return
    genes = ScviSource.load(value, trust_pickle=args.trust_pickle).genes
    check_gene_overlap(
        adata.var_names,
        genes,
        min_overlap=args.min_gene_overlap,
        model_name=f"scvi model in {value}",
    )


def _check_labels(adata, labels_key: str, obs=None) -> None:
    """Labels of at least 2 classes in ``adata`` (or in ``obs``, its slide's, when given)."""
    from ._validate import check_obs_key
    from .model import labelled_mask

    check_obs_key(adata, labels_key)
    y = (adata.obs if obs is None else obs)[labels_key].to_numpy()
    mask = labelled_mask(y)
    n_classes = len({str(v) for v in y[mask]})
    if n_classes < 2:
        raise ScResidualError(
            f"obs[{labels_key!r}] has {n_classes} class(es) among {int(mask.sum())} labelled "
            "spots; training needs labels of at least 2 classes: label more spots."
        )


def _check_fit_args(args, adata, obs=None) -> None:
    """Check every ``fit`` argument against the slide before any training.

    Each failure is one line naming the flag, so nothing is trained, saved and then refused.
    ``obs``: the whole slide's, when ``adata`` is a sample of it (a tiled fit).
    """
    from ._genes import expression_matrix
    from ._io import check_model_dir
    from ._validate import (
        check_cells,
        check_obs_key,
        check_obsm_key,
        check_spatial,
        parse_graph,
        parse_spec,
    )
    from .model.sdata import check_outside_store
    from .read.sdata import is_zarr

    _check_positive(
        ("--n-hops", args.n_hops),
        ("--max-epochs", args.max_epochs),
        ("--folds", args.folds),
        ("--n-jobs", args.n_jobs),
    )
    if args.tile_size is not None and not args.tile_size > 0:
        raise ScResidualError(f"--tile-size must be a positive number, got {args.tile_size}.")
    _check_fraction("--min-gene-overlap", args.min_gene_overlap)
    with _flag("--model-dir"):
        check_model_dir(
            args.model_dir, overwrite=args.overwrite, flag="--overwrite", inputs=[args.input]
        )
        if is_zarr(args.input):
            check_outside_store(args.model_dir, args.input)
    if args.output is not None:  # its messages name --output
        _check_output(args, [args.model_dir])
    check_cells(adata, 2, "training")
    with _flag("--labels-key"):
        _check_labels(adata, args.labels_key, obs)
    if args.library_key is not None:
        with _flag("--library-key"):
            check_obs_key(adata, args.library_key)
    with _flag("--graph"):
        graph_on = parse_graph(args.graph)[0] != "none"
    if graph_on:
        with _flag("--spatial-key"):
            check_spatial(adata, args.spatial_key)
    with _flag("--layer"):
        expression_matrix(adata, args.layer)
    sources = _sources(args)
    for spec in sources:
        with _flag("--source"):
            _check_source(spec, adata, args)
    if args.arm in ("linear-probe", "adapter") and not sources:
        raise ScResidualError(
            f"--arm {args.arm} reads a frozen source; pass --source (obsm:KEY or scvi:DIR)."
        )
    for spec in args.features or []:
        with _flag("--features"):
            kind, value = parse_spec(spec, FEATURE_KINDS, "features")
            if kind == "obsm":
                check_obsm_key(adata, value)


def _sources(args) -> list[str]:
    return [s for s in args.source or [] if s != "none"]


def _mark_training_spots(adata, labels_key: str) -> None:
    """Record which spots were training labels, next to the predictions."""
    from .model import labelled_mask

    adata.obs[train_key(labels_key)] = labelled_mask(adata.obs[labels_key].to_numpy())


def _read_slide(args, spatial_key: str, require_spatial: bool):
    """The input slide as an AnnData, and the ``.zarr`` store it came from (or None)."""
    from . import read
    from .model.sdata import ZarrSlide
    from .read.sdata import is_zarr

    if is_zarr(args.input):
        store, adata = ZarrSlide.read(args.input, table_key=args.table, spatial_key=spatial_key)
        return adata, store
    if args.table is not None:
        raise ScResidualError("--table names a table of a .zarr store; drop it for an .h5ad input.")
    if args.coordinates is not None:
        with _flag("--coordinates"):
            adata = read.table(args.input, args.coordinates)
        if spatial_key != "spatial":
            adata.obsm[spatial_key] = adata.obsm.pop("spatial")
        return adata, None
    return read.h5ad(args.input, spatial_key=spatial_key, require_spatial=require_spatial), None


def _import_labels(adata, args, labels_key: str) -> None:
    """Put the labels of ``--labels-csv`` into ``obs[labels_key]``, matched by cell id."""
    from . import read

    if args.labels_csv is None:
        if args.labels_column is not None:
            raise ScResidualError("--labels-column names a column of --labels-csv; pass both.")
        return
    with _flag("--labels-csv"):
        labels = read.labels(args.labels_csv, label_column=args.labels_column)
        found = labels.index.isin(adata.obs_names)
        if not found.any():
            raise ScResidualError(
                f"none of its {len(labels)} cell ids is a cell of {args.input} (e.g. "
                f"{labels.index[0]!r}; the slide's: {adata.obs_names[0]!r}); pass the labels "
                "of this slide, ids as the slide names its cells."
            )
    if not found.all():
        logging.getLogger(__name__).warning(
            "WARNING: %d of %d cell ids of %s are not cells of %s; their labels are ignored.",
            int((~found).sum()),
            len(labels),
            args.labels_csv,
            args.input,
        )
    adata.obs[labels_key] = labels.reindex(adata.obs_names).to_numpy()


def _check_output(args, model_dirs: list) -> None:
    from ._io import check_output_file
    from .model.sdata import check_zarr_output
    from .read.sdata import is_zarr

    if is_zarr(args.input):
        check_zarr_output(args.output, args.input, model_dirs=model_dirs)
    elif str(args.output).rstrip("/").endswith(".zarr"):
        raise ScResidualError(
            f"--output {args.output!r}: the predictions of an .h5ad input go to an .h5ad; for "
            "a .zarr store, write the slide as one first (spatialdata.SpatialData(tables="
            "{'table': spatialdata.models.TableModel.parse(adata)}).write('slide.zarr')), then "
            "pass that store as the input and as --output."
        )
    else:
        check_output_file(args.output, inputs=[args.input], model_dirs=model_dirs)


def _write_slide(adata, args, store, labels_key: str, model_dirs: list) -> None:
    """Write ``adata`` to ``--output``; for a ``.zarr`` input, its predictions into the table."""
    if store is None:
        _write_h5ad(adata, args.output, [args.input], model_dirs)
    else:
        store.write(adata, labels_key, args.output, model_dirs=model_dirs)


def _write_h5ad(adata, path: str, inputs: list, model_dirs: list) -> None:
    from ._io import atomic_path, check_output_file

    check_output_file(path, inputs=inputs, model_dirs=model_dirs)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def _fit(args) -> None:
    from ._constants import SETUP_KEY
    from ._io import check_fit_paths
    from .model.sdata import warn_several_regions

    if args.tile_size is not None or args.scheduler is not None:
        _fit_tiled(args)
        return
    adata, store = _read_slide(args, args.spatial_key, require_spatial=False)
    if store is not None:
        warn_several_regions(adata, args.library_key)
    _import_labels(adata, args, args.labels_key)
    _check_fit_args(args, adata)
    model = _set_up(args, adata)
    model.train(args.max_epochs, folds=args.folds, n_jobs=args.n_jobs, progress=not args.quiet)
    del adata.uns[SETUP_KEY]  # the written slide carries predictions, not a registration
    check_fit_paths(
        args.input, args.model_dir, None if store else args.output, overwrite=args.overwrite
    )
    if store is not None and args.output:
        _check_output(args, [args.model_dir])
    _save(args, model)
    if args.output:
        model.predict(adata)
        _mark_training_spots(adata, args.labels_key)
        _write_slide(adata, args, store, args.labels_key, [args.model_dir])
        print(f"predictions written to {args.output}")


def _fit_tiled(args) -> None:
    """``fit`` tile by tile: a .zarr table or an .h5ad read lazily, set up on a sample."""
    from ._io import check_fit_paths
    from .model import train_tiled
    from .read.lazy import LazyTable
    from .read.sdata import is_zarr

    refused = {  # a tiled fit reads the slide's own columns and writes no slide
        "--output": (
            args.output,
            "label the slide with `scresidual predict MODEL_DIR INPUT --tile-size SIDE --output "
            "OUT` after the fit",
        ),
        "--labels-csv": (args.labels_csv, "put the labels in a column of the input first"),
        "--coordinates": (args.coordinates, "pass an .h5ad with coordinates or a .zarr store"),
    }
    for flag, (value, fix) in refused.items():
        if value is not None:
            raise ScResidualError(f"{flag} is not available with --tile-size/--scheduler; {fix}.")
    if "neighbourhood-pca" in (args.features or []):  # a sample's cells are not neighbours
        raise ScResidualError(
            "--features neighbourhood-pca is fitted on the cells' neighbour means, which the "
            "50,000-cell sample a tiled fit is set up on does not hold; use --features pca."
        )
    columns = [c for c in (args.labels_key, args.library_key) if c is not None]
    with ExitStack() as stack:
        if is_zarr(args.input):
            lazy = LazyTable.open(
                args.input,
                table_key=args.table,
                spatial_key=args.spatial_key,
                layer=args.layer,
                obs_columns=columns,
            )
        else:
            if args.table is not None:
                raise ScResidualError("--table names a table of a .zarr store; drop it.")
            backed = stack.enter_context(_backed(_read_backed(args.input, args.spatial_key)))
            lazy = LazyTable.from_backed(backed, spatial_key=args.spatial_key, layer=args.layer)
        sample = lazy.sample(PCA_SAMPLE, seed=args.seed, spatial_key=args.spatial_key)
        _check_fit_args(args, sample, lazy.obs)
        model = _set_up(args, sample)
        client = _dask_client(stack, args.scheduler)
        train_tiled(  # the table opened above: obs and coordinates are held once
            model,
            lazy,
            tile_size=args.tile_size,
            n_jobs=args.n_jobs or 1,
            client=client,
            progress=not args.quiet,
            max_epochs=args.max_epochs,
            folds=args.folds,
        )
    check_fit_paths(args.input, args.model_dir, None, overwrite=args.overwrite)
    _save(args, model)


def _read_backed(path: str, spatial_key: str):
    """An .h5ad opened backed (read-only), with its coordinates checked."""
    import anndata

    from ._validate import check_spatial

    adata = anndata.read_h5ad(path, backed="r")
    check_spatial(adata, spatial_key)
    return adata


def _save(args, model) -> None:
    model.save(args.model_dir, overwrite=args.overwrite)
    # The one summary of the fit; which arm the guard kept, and why, is its own log line.
    print(
        f"fitted {model.init_params_['arm']} ({len(model.classes_)} classes); model saved to "
        f"{args.model_dir}"
    )


def _set_up(args, adata):
    """Register ``adata`` with the ``fit`` options; the model to train."""
    from .model import SpatialRegionClassifier

    arm, sources = args.arm, _sources(args)
    if not sources and arm == "refine":
        # Without a source REFINE is scratch: say so, and fit (and report) it by that name.
        arm = "scratch"
        if args.source is None:
            print(NO_SOURCE_WARNING, file=sys.stderr)
    SpatialRegionClassifier.setup_anndata(
        adata,
        labels_key=args.labels_key,
        sources=sources,
        features=args.features or ["pca"],
        graph=args.graph,
        n_hops=args.n_hops,
        gradients=args.gradients,
        library_key=args.library_key,
        spatial_key=args.spatial_key,
        layer=args.layer,
        min_gene_overlap=args.min_gene_overlap,
    )
    return SpatialRegionClassifier(
        adata,
        arm=arm,
        encoder=args.encoder,
        guard=not args.no_guard,
        seed=args.seed,
        trust_pickle=args.trust_pickle,
    )


def _predict(args) -> None:
    from ._constants import pred_key
    from ._validate import parse_graph
    from .model import SpatialRegionClassifier

    _check_fraction("--min-gene-overlap", args.min_gene_overlap)
    model = SpatialRegionClassifier.load(
        args.model_dir, progress=not args.quiet, trust_pickle=args.trust_pickle
    )
    if args.min_gene_overlap is not None:
        model.setup["min_gene_overlap"] = args.min_gene_overlap
    _check_output(args, [args.model_dir])
    if args.tile_size is not None or args.n_jobs is not None or args.scheduler is not None:
        _predict_tiled(args, model)
        return
    adata, store = _read_slide(
        args,
        model.setup["spatial_key"],
        require_spatial=parse_graph(model.setup["graph"])[0] != "none",
    )
    model.predict(adata, alpha=args.alpha, method=args.sets_method)
    _write_slide(adata, args, store, model.setup["labels_key"], [args.model_dir])
    counts = adata.obs[pred_key(model.setup["labels_key"])].value_counts()
    print(f"labelled {adata.n_obs} cells: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"predictions written to {args.output}")


def _predict_tiled(args, model) -> None:
    """``predict`` tile by tile: a .zarr table read lazily, an .h5ad opened backed."""
    import anndata

    from .model import predict_tiled
    from .read.sdata import is_zarr

    options = {
        "tile_size": args.tile_size,
        "n_jobs": args.n_jobs or 1,
        "alpha": args.alpha,
        "method": args.sets_method,
        "progress": not args.quiet,
    }
    with ExitStack() as stack:
        options["client"] = _dask_client(stack, args.scheduler)
        if is_zarr(args.input):
            predict_tiled(model, args.input, table_key=args.table, output=args.output, **options)
        else:
            if args.table is not None:
                raise ScResidualError("--table names a table of a .zarr store; drop it.")
            backed = stack.enter_context(_backed(anndata.read_h5ad(args.input, backed="r")))
            adata = predict_tiled(model, backed, copy=True, **options)
            _write_h5ad(adata, args.output, [args.input], [args.model_dir])
    print(f"predictions written to {args.output}")


def _dask_client(stack: ExitStack, address: str | None):
    """A client of the Dask scheduler at ``address`` (closed with ``stack``), or ``None``."""
    if address is None:
        return None
    from distributed import Client

    try:
        return stack.enter_context(Client(address, timeout=10))
    except OSError as err:  # includes timeouts
        raise ScResidualError(
            f"--scheduler: cannot reach a Dask scheduler at {address} "
            f"({type(err).__name__}); start one (dask scheduler) or fix the address."
        ) from err


@contextmanager
def _backed(adata):
    """Close a backed AnnData's file on leaving the block."""
    try:
        yield adata
    finally:
        adata.file.close()


def _suggest(args) -> None:
    from ._io import atomic_path, check_output_file
    from ._validate import parse_graph
    from .model import SpatialRegionClassifier
    from .tl import suggest_labels

    _check_positive(("--n", args.n))
    with _flag("--output"):
        check_output_file(
            args.output, inputs=[args.input], model_dirs=[args.model_dir], suffix=".csv"
        )
    model = SpatialRegionClassifier.load(
        args.model_dir, progress=not args.quiet, trust_pickle=args.trust_pickle
    )
    adata, _ = _read_slide(
        args,
        model.setup["spatial_key"],
        require_spatial=parse_graph(model.setup["graph"])[0] != "none",
    )
    labels_key = args.labels_key or model.setup["labels_key"]
    _import_labels(adata, args, labels_key)
    table = suggest_labels(
        adata, model, n=args.n, labels_key=labels_key, strategy=args.strategy, seed=args.seed
    )
    with atomic_path(args.output) as tmp:
        # obs['<key>_uncertainty'] is 1 - p1; the CSV's margin is named apart from it
        table.rename(columns={"uncertainty": "margin_uncertainty"}).to_csv(
            tmp, index_label="obs_name"
        )
    counts = table["prediction"].value_counts()
    print(
        f"suggested {len(table)} spots to label (currently predicted: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"); written to {args.output}"
    )


def _pretrain_scvi(args) -> None:
    from ._genes import expression_matrix
    from ._validate import check_obs_key
    from .sources import pretrain_scvi

    if Path(args.out).exists() and not args.overwrite:
        raise ScResidualError(f"--out: {args.out} exists; pass --overwrite or another --out.")
    _check_positive(("--n-latent", args.n_latent), ("--max-epochs", args.max_epochs))
    adata, _ = _read_slide(args, "spatial", require_spatial=False)
    with _flag("--layer"):
        expression_matrix(adata, args.layer)
    if args.batch_key is not None:
        with _flag("--batch-key"):
            check_obs_key(adata, args.batch_key)
    pretrain_scvi(
        adata,
        args.out,
        layer=args.layer,
        batch_key=args.batch_key,
        n_latent=args.n_latent,
        max_epochs=args.max_epochs,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        f"scVI source saved to {args.out}; use it frozen with: scresidual fit {args.input} "
        f"--labels-key KEY --model-dir DIR --source scvi:{args.out}"
    )


def _demo(args) -> None:
    from ._demo import run_demo

    _check_positive(("--n-jobs", args.n_jobs))
    results = run_demo(
        args.out, seed=args.seed, n_jobs=args.n_jobs, quick=args.quick, progress=not args.quiet
    )
    cols = ["arm", "evaluated_on", "accuracy", "macro_f1", "chosen"]
    print(results[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scresidual`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["stress-test"]:
        # Its own parser owns every option, --help included.
        from .stress import main_stress_test

        try:
            return int(main_stress_test(argv[1:]) or 0)
        except ScResidualError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            from ._io import os_error_message

            print(f"error: {os_error_message(err)}", file=sys.stderr)
            return 2
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    quiet = getattr(args, "quiet", False)
    from ._settings import settings

    settings.verbosity = "warning" if quiet else "info"
    commands = {
        "demo": _demo,
        "pretrain-scvi": _pretrain_scvi,
        "fit": _fit,
        "predict": _predict,
        "suggest": _suggest,
    }
    try:  # --quiet: result lines (stdout) too are dropped; warnings and errors go to stderr
        with redirect_stdout(io.StringIO()) if quiet else nullcontext():
            commands[args.command](args)
    except ScResidualError as err:
        print(f"error: {_cli_message(str(err), args.flags)}", file=sys.stderr)
        return 2
    except OSError as err:  # read-only folders, full disks, vanished files
        from ._io import os_error_message

        print(f"error: {os_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no partial output was written.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
