import json
import re
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from scresidual.cli import _cli_message, _HelpFormatter, _parser
from scresidual.model import SpatialRegionClassifier

from ..conftest import file_hash
from .conftest import run_cli as _run


def test_fit_then_predict(slide_file, small_slides, tmp_path, capsys):
    digest = file_hash(slide_file)
    code, out, err = _run(
        [
            "fit",
            str(slide_file),
            "--labels-key",
            "label",
            "--model-dir",
            str(tmp_path / "m"),
            "--folds",
            "2",
            "--n-jobs",
            "1",
            "--quiet",
            "--output",
            str(tmp_path / "f.h5ad"),
        ],
        capsys,
    )
    assert code == 0, err
    assert out == "" and file_hash(slide_file) == digest  # --quiet: warnings and errors only
    # No --source: one warning (despite --quiet) naming the remedy; reported as scratch.
    assert err.count("\n") == 1 and err.startswith("WARNING: no --source")
    assert "--source scvi:DIR" in err and "scresidual pretrain-scvi" in err
    meta = json.loads((tmp_path / "m" / "residual_model.json").read_text())
    assert meta["config"]["folds"] == 2  # --folds reached the model
    setup = json.loads((tmp_path / "m" / "spatial_setup.json").read_text())
    defaults = {
        **SpatialRegionClassifier.setup_anndata.__kwdefaults__,
        **SpatialRegionClassifier.__init__.__kwdefaults__,
    }
    for key in ("graph", "n_hops", "gradients", "encoder"):  # the CLI's defaults are the class's
        assert setup[key] == defaults[key]
    assert "_scresidual_setup" not in ad.read_h5ad(tmp_path / "f.h5ad").uns
    other = small_slides[small_slides.obs["slide"] == "slide2"].copy()
    other.write_h5ad(tmp_path / "other.h5ad")
    code, out, err = _run(
        [
            "predict",
            str(tmp_path / "m"),
            str(tmp_path / "other.h5ad"),
            "--output",
            str(tmp_path / "pred.h5ad"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert "label_pred" in pred.obs and pred.obsm["label_proba"].shape[0] == other.n_obs
    assert (pred.obs["label_pred"].astype(str) == pred.obs["region"].astype(str)).mean() > 0.5
    fitted = ad.read_h5ad(tmp_path / "f.h5ad")
    assert fitted.obs["label_pred"].notna().all()
    assert (fitted.obs["label_train"] == fitted.obs["label"].notna()).all()
    # Predicting needs no training machinery: Lightning (seconds to import) stays unloaded.
    script = (
        "import sys; from scresidual.cli import main; "
        f"code = main(['predict', {str(tmp_path / 'm')!r}, {str(tmp_path / 'other.h5ad')!r}, "
        f"'--output', {str(tmp_path / 'pred2.h5ad')!r}, '--quiet']); "
        "print(code, 'lightning' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.stdout.splitlines()[-1].split() == ["0", "False"], run.stdout + run.stderr


@pytest.mark.parametrize(
    "edit, args, message",
    [
        ("no_xy", [], "no spatial coordinates"),
        ("none", ["--labels-key", "nope"], "obs key 'nope'"),
        ("one_class", [], "at least 2 classes"),
        ("none", ["--source", "obsm:X_missing"], "obsm key 'X_missing'"),
        ("truncate", [], "truncated file"),
        ("none", ["--graph", "ring:3"], "unknown graph"),
    ],
)
def test_fit_errors_are_one_line(slide_file, tmp_path, capsys, edit, args, message):
    a = ad.read_h5ad(slide_file)
    if edit == "no_xy":
        del a.obsm["spatial"]
    elif edit == "one_class":
        a.obs["label"] = np.where(a.obs["label"].notna(), "x", None)
    if edit != "none":
        a.write_h5ad(slide_file)
    if edit == "truncate":
        data = slide_file.read_bytes()
        slide_file.write_bytes(data[: len(data) // 2])
    digest = file_hash(slide_file)
    argv = [
        "fit",
        str(slide_file),
        "--labels-key",
        "label",
        "--model-dir",
        str(tmp_path / "m"),
        "--quiet",
    ]
    if "--labels-key" in args:
        argv[3] = args[1]
        args = []
    code, out, err = _run(argv + args, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err
    assert file_hash(slide_file) == digest
    assert not (tmp_path / "m").exists()


def test_gradients_flag_reaches_the_model(slide_file, tmp_path, capsys):
    argv = ["fit", str(slide_file), "--labels-key", "label", "--model-dir", str(tmp_path / "m")]
    code, _, err = _run([*argv, "--gradients", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "spatial_setup.json").read_text())["gradients"] is True
    meta = json.loads((tmp_path / "m" / "residual_model.json").read_text())
    assert meta["config"]["side_blocks"] == ["gradients_0"]
    assert "side_share" in meta["guard_report"]["scratch"]
    argv[-1] = str(tmp_path / "m2")
    code, _, err = _run([*argv, "--gradients", "--graph", "none", "--quiet"], capsys)
    last = err.splitlines()[-1]
    assert code == 2 and last.startswith("error: --gradients reads the spatial graph")


def test_predict_rejects_a_non_model_dir(slide_file, tmp_path, capsys):
    code, _, err = _run(
        ["predict", str(tmp_path), str(slide_file), "--output", str(tmp_path / "o.h5ad")], capsys
    )
    assert code == 2 and "not a saved" in err


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "scresidual.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in ("demo", "fit", "predict", "stress-test"):
        assert command in out


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--output", "preds.csv"], "--output"),
        (["--library-key", "slide_id"], "--library-key"),
        (["--spatial-key", "xy"], "--spatial-key"),
        (["--source", "scvi:no_such_dir"], "--source"),
        (["--features", "obsm:protein"], "--features"),
        (["--layer", "raw"], "--layer"),
        (["--arm", "linear-probe"], "--arm"),
        (["--min-gene-overlap", "2"], "--min-gene-overlap"),
        (["--n-jobs", "0"], "--n-jobs"),
        (["--model-dir-exists"], "--model-dir"),
    ],
)
def test_fit_checks_every_argument_before_training(slide_file, tmp_path, capsys, args, flag):
    model_dir = tmp_path / "m"
    if args == ["--model-dir-exists"]:
        model_dir.mkdir()
        args = []
    code, out, err = _run(
        ["fit", str(slide_file), "--labels-key", "label", "--model-dir", str(model_dir), *args],
        capsys,
    )
    assert code == 2 and out == ""
    assert err.startswith(f"error: {flag}") and err.count("\n") == 1, err
    assert "_key=" not in err  # CLI users are told flags, not Python keywords
    assert flag == "--model-dir" or not model_dir.exists()


def test_python_keywords_in_messages_become_flags():
    flags = frozenset({"--spatial-key", "--layer", "--min-gene-overlap", "--overwrite"})
    assert _cli_message("store it there or pass spatial_key=.", flags) == (
        "store it there or pass --spatial-key."
    )
    assert _cli_message("pass the counts layer (e.g. layer='counts')", flags) == (
        "pass the counts layer (e.g. --layer counts)"
    )
    assert _cli_message("or lower min_overlap=.", flags) == "or lower --min-gene-overlap."
    assert _cli_message("pass overwrite=True", flags) == "pass --overwrite"
    assert _cli_message("pass gene_col= instead", flags) == "pass gene_col= instead"  # no flag


def test_help_gives_every_option_a_text_a_default_and_an_example():
    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("demo", "pretrain-scvi", "fit", "predict"):
        sub = commands[name]
        assert sub.formatter_class is _HelpFormatter and "example:" in sub.epilog, name
        formatter = sub.formatter_class(name)
        for action in sub._actions:
            if action.dest == "help":
                continue
            text = formatter._get_help_string(action) or ""
            assert len(text) > 10, (name, action.dest)
            if action.option_strings and not action.required:
                assert "default" in text, (name, action.dest, text)
    assert "model_dir" in commands["predict"].format_help()


@pytest.mark.slow
def test_pretrain_scvi_then_fit_with_it(slide_file, tmp_path, capsys):
    source = tmp_path / "scvi"
    code, out, err = _run(
        ["pretrain-scvi", str(slide_file), "--out", str(source), "--max-epochs", "2", "--quiet"],
        capsys,
    )
    assert code == 0, err
    assert (source / "model.pt").is_file() and out == ""
    code, out, err = _run(["pretrain-scvi", str(slide_file), "--out", str(source)], capsys)
    assert code == 2 and "--out" in err and "--overwrite" in err
    code, out, err = _run(
        [
            "fit",
            str(slide_file),
            "--labels-key",
            "label",
            "--model-dir",
            str(tmp_path / "m"),
            "--source",
            f"scvi:{source}",
            "--folds",
            "2",
            "--n-jobs",
            "1",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    assert err == "" and out == ""
    # A slide with none of the model's genes is refused before training, naming the flag.
    a = ad.read_h5ad(slide_file)
    a.var_names = [f"other{i}" for i in range(a.n_vars)]
    a.write_h5ad(tmp_path / "renamed.h5ad")
    code, out, err = _run(
        [
            "fit",
            str(tmp_path / "renamed.h5ad"),
            "--labels-key",
            "label",
            "--model-dir",
            str(tmp_path / "m2"),
            "--source",
            f"scvi:{source}",
        ],
        capsys,
    )
    assert code == 2 and err.startswith("error: --source: only 0 of")
    assert "--min-gene-overlap" in err and not (tmp_path / "m2").exists()


@pytest.mark.slow
def test_demo_prints_each_line_once_and_no_third_party_warnings(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "scresidual.cli", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    lines = [
        line.strip()
        for text in (run.stdout, run.stderr)
        for line in re.split(r"[\r\n]", text)
        if line.strip() and "%|" not in line  # progress bars redraw their line by design
    ]
    repeated = {line for line in lines if lines.count(line) > 1}
    assert not repeated, repeated
    assert not [line for line in lines if re.search(r"warn|seed set|tip:", line, re.I)], lines
    assert "[4/4]" in run.stdout and (tmp_path / "regions_held_out.png").is_file()
    pred = ad.read_h5ad(tmp_path / "predictions.h5ad")
    assert pred.obs["region_train"].dtype == bool and 0 < pred.obs["region_train"].mean() < 0.2
