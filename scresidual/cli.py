"""The ``scresidual`` command line: demo, fit, predict, stress-test.

Bad input ends with one line ``error: …`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from ._errors import ScResidualError

ARM_CHOICES = ("refine", "scratch", "linear-probe", "adapter")
TRUST_HELP = (
    "let scvi sources hold arbitrary Python objects (loading them can run code): only for "
    "model folders from people you trust"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scresidual",
        description="Extend a frozen single-cell model with spatial (and other) signals: REFINE.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main job on the embedded lymph-node data")
    demo.add_argument("--out", default="scresidual_demo", help="output folder")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    fit = sub.add_parser("fit", help="fit a region classifier on a slide (.h5ad)")
    fit.add_argument("input", help="training slide, .h5ad with obsm['spatial']")
    fit.add_argument("--labels-key", required=True, help="obs column of labels (NaN = unlabelled)")
    fit.add_argument("--model-dir", required=True, help="where to save the fitted model")
    fit.add_argument(
        "--source", action="append", default=None,
        help="frozen source: obsm:KEY | scvi:DIR | none (repeatable; default none)",
    )
    fit.add_argument("--arm", choices=ARM_CHOICES, default="refine")
    fit.add_argument(
        "--features", action="append", default=None,
        help="residual input: pca | obsm:KEY (repeatable; default pca)",
    )
    fit.add_argument("--graph", default="knn:6", help="knn:K | radius:R | delaunay | none")
    fit.add_argument("--n-hops", type=int, default=2)
    fit.add_argument("--library-key", default=None, help="obs column naming each cell's slide")
    fit.add_argument("--spatial-key", default="spatial")
    fit.add_argument("--layer", default=None, help="layer with raw counts (default X)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--max-epochs", type=int, default=200)
    fit.add_argument("--no-guard", action="store_true", help="disable the scratch fallback")
    fit.add_argument(
        "--folds", type=int, default=None,
        help="cross-fitting folds (default: 5 below 1,000 labelled cells, else 1 split)",
    )
    fit.add_argument("--output", default=None, help="also write the slide with predictions here")
    fit.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing --model-dir (only a folder scresidual saved a model in)",
    )
    fit.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    fit.add_argument("--quiet", action="store_true")

    pred = sub.add_parser("predict", help="label a slide with a fitted model")
    pred.add_argument("model_dir")
    pred.add_argument("input", help="slide to label, .h5ad")
    pred.add_argument("--output", required=True, help="output .h5ad (the input is never changed)")
    pred.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    pred.add_argument(
        "--alpha", type=float, default=0.1,
        help="conformal sets cover the true region with probability 1 - alpha (default 0.1)",
    )
    pred.add_argument("--sets-method", choices=("lac", "aps"), default="lac",
                      help="conformal score: lac (smallest sets) or aps (adaptive)")
    pred.add_argument("--quiet", action="store_true")

    # Listed for --help only: main() hands "stress-test …" to the stress-test parser.
    sub.add_parser(
        "stress-test", help="the paper's negative-transfer stress tests (image, text, tabular)",
        add_help=False,
    )
    return p


def _write_h5ad(adata, path: str, inputs: list, model_dirs: list) -> None:
    from ._io import atomic_path, check_output_file

    check_output_file(path, inputs=inputs, model_dirs=model_dirs)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def _fit(args) -> None:
    from . import read
    from ._io import check_fit_paths
    from .model import SpatialRegionClassifier
    from .pp import parse_graph

    check_fit_paths(args.input, args.model_dir, args.output, overwrite=args.overwrite)
    adata = read.h5ad(
        args.input, spatial_key=args.spatial_key,
        require_spatial=parse_graph(args.graph)[0] != "none",
    )
    model = SpatialRegionClassifier(
        adata, labels_key=args.labels_key, sources=args.source or [],
        features=args.features or ["pca"], graph=args.graph, n_hops=args.n_hops,
        library_key=args.library_key, spatial_key=args.spatial_key, layer=args.layer,
        arm=args.arm, seed=args.seed, max_epochs=args.max_epochs, guard=not args.no_guard,
        folds=args.folds, progress=not args.quiet,
    )
    model.trust_pickle = args.trust_pickle
    model.train()
    check_fit_paths(args.input, args.model_dir, args.output, overwrite=args.overwrite)
    model.save(args.model_dir, overwrite=args.overwrite)
    report = model.model.guard_report_
    print(
        f"fitted {args.arm} ({len(model.classes_)} classes); kept {model.model.chosen_arm_!r}; "
        + "; ".join(f"{a}: val loss {r['val_loss']:.3f}" for a, r in report.items())
    )
    print(f"model saved to {args.model_dir}")
    if args.output:
        model.predict(adata)
        _write_h5ad(adata, args.output, [args.input], [args.model_dir])
        print(f"predictions written to {args.output}")


def _predict(args) -> None:
    from . import read
    from ._constants import pred_key
    from ._io import check_output_file
    from .model import SpatialRegionClassifier
    from .pp import parse_graph

    model = SpatialRegionClassifier.load(
        args.model_dir, progress=not args.quiet, trust_pickle=args.trust_pickle
    )
    check_output_file(args.output, inputs=[args.input], model_dirs=[args.model_dir])
    adata = read.h5ad(
        args.input, spatial_key=model.setup["spatial_key"],
        require_spatial=parse_graph(model.setup["graph"])[0] != "none",
    )
    model.predict(adata, alpha=args.alpha, method=args.sets_method)
    _write_h5ad(adata, args.output, [args.input], [args.model_dir])
    counts = adata.obs[pred_key(model.setup["labels_key"])].value_counts()
    print(f"labelled {adata.n_obs} cells: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"predictions written to {args.output}")


def _demo(args) -> None:
    from ._demo import run_demo

    results = run_demo(args.out, seed=args.seed, progress=not args.quiet)
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
    # docrep (used by squidpy) warns about its own docstrings at import; nothing to act on.
    warnings.filterwarnings("ignore", ".*is not a valid key", SyntaxWarning)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    quiet = getattr(args, "quiet", False)
    logging.getLogger("scresidual").setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        {"demo": _demo, "fit": _fit, "predict": _predict}[args.command](args)
    except ScResidualError as err:
        print(f"error: {err}", file=sys.stderr)
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
