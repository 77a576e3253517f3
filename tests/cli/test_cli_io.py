"""The command line's output (one summary, --quiet), its messages and its inputs."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scresidual._labels_file import write_labels_csv
from scresidual.cli import _HelpFormatter, _parser

from ..conftest import file_hash
from .conftest import run_cli as _run


def _fit(slide_file, tmp_path, *extra):
    return [
        "fit",
        str(slide_file),
        "--model-dir",
        str(tmp_path / "m"),
        "--source",
        "none",
        *extra,
    ]


def test_fit_prints_one_summary_line_and_quiet_prints_nothing(slide_file, tmp_path, capsys):
    a = ad.read_h5ad(slide_file)
    a.obsm["X_emb"] = np.random.default_rng(0).normal(size=(a.n_obs, 4))
    a.write_h5ad(slide_file)
    argv = [
        "fit",
        str(slide_file),
        "--labels-key",
        "label",
        "--model-dir",
        str(tmp_path / "m"),
        "--source",
        "obsm:X_emb",
    ]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert out == f"fitted refine (7 classes); model saved to {tmp_path / 'm'}\n"
    assert "kept" not in out  # the guard's choice is said once, in its own line
    code, out, err = _run(
        [
            "predict",
            str(tmp_path / "m"),
            str(slide_file),
            "--output",
            str(tmp_path / "p.h5ad"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0 and out == "" and err == ""


def test_every_default_is_shown_once():
    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    for name, sub in commands.items():
        formatter = _HelpFormatter(name)
        for action in sub._actions:
            if not action.help:
                continue
            text = formatter._expand_help(action).lower()
            assert text.count("default") <= 1, (name, action.dest, text)


def test_a_missing_key_lists_every_column_or_says_how_many_more(slide_file, tmp_path, capsys):
    a = ad.read_h5ad(slide_file)
    for i in range(30):
        a.obs[f"extra{i:02d}"] = 0
    a.write_h5ad(slide_file)
    code, _, err = _run(_fit(slide_file, tmp_path, "--labels-key", "labl"), capsys)
    assert code == 2 and err.count("\n") == 1
    assert "did you mean 'label'?" in err
    assert f"the {a.obs.shape[1]} obs columns:" in err and "… (" in err


def test_a_missing_file_is_said_plainly(tmp_path, capsys):
    code, _, err = _run(_fit(tmp_path / "nope.h5ad", tmp_path, "--labels-key", "x"), capsys)
    assert (
        code == 2 and err == f"error: file not found: {tmp_path / 'nope.h5ad'}; check the path.\n"
    )


def test_a_table_input_is_pointed_to_read_table_and_read_with_coordinates(
    slide_file, tmp_path, capsys
):
    a = ad.read_h5ad(slide_file)
    counts = pd.DataFrame(a.X.toarray(), index=a.obs_names, columns=a.var_names)
    counts.to_csv(tmp_path / "counts.csv", index_label="cell_id")
    xy = pd.DataFrame(a.obsm["spatial"], index=a.obs_names, columns=["x", "y"])
    xy["label"] = a.obs["label"]
    xy.to_csv(tmp_path / "xy.csv", index_label="cell_id")
    digest = file_hash(tmp_path / "counts.csv")
    code, _, err = _run(_fit(tmp_path / "counts.csv", tmp_path, "--labels-key", "label"), capsys)
    assert code == 2 and "scresidual.read.table" in err and "--coordinates" in err
    code, _, err = _run(
        _fit(
            tmp_path / "counts.csv",
            tmp_path,
            "--labels-key",
            "label",
            "--coordinates",
            str(tmp_path / "xy.csv"),
            "--output",
            str(tmp_path / "out.h5ad"),
            "--quiet",
        ),
        capsys,
    )
    assert code == 0, err
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.n_obs == a.n_obs and out.obs["label_pred"].notna().all()
    assert file_hash(tmp_path / "counts.csv") == digest


def test_labels_come_from_a_labels_csv_the_widget_format(slide_file, tmp_path, capsys):
    a = ad.read_h5ad(slide_file)
    labels = a.obs["label"].copy()
    labels.name = "region"
    write_labels_csv(labels, tmp_path / "labels.csv")  # what the widget's autosave writes
    a.obs = a.obs.drop(columns="label")
    a.write_h5ad(slide_file)
    digest = file_hash(slide_file)
    args = ["--labels-key", "region", "--labels-csv", str(tmp_path / "labels.csv")]
    code, out, err = _run(
        _fit(slide_file, tmp_path, *args, "--output", str(tmp_path / "o.h5ad")), capsys
    )
    assert code == 0, err
    fitted = ad.read_h5ad(tmp_path / "o.h5ad")
    assert (fitted.obs["region_train"] == labels.notna().to_numpy()).all()
    assert file_hash(slide_file) == digest
    # ids of another slide: refused in one line, naming the flag
    other = pd.DataFrame({"cell_id": ["x1", "x2"], "region": ["a", "b"]})
    other.to_csv(tmp_path / "other.csv", index=False)
    code, _, err = _run(
        _fit(
            slide_file,
            tmp_path,
            "--labels-key",
            "region",
            "--labels-csv",
            str(tmp_path / "other.csv"),
            "--overwrite",
        ),
        capsys,
    )
    assert code == 2 and err.startswith("error: --labels-csv: none of its 2 cell ids")


def test_suggest_csv_names_its_margin_apart_from_obs_uncertainty(slide_file, tmp_path, capsys):
    code, _, err = _run(_fit(slide_file, tmp_path, "--labels-key", "label", "--quiet"), capsys)
    assert code == 0, err
    code, _, err = _run(
        [
            "suggest",
            str(tmp_path / "m"),
            str(slide_file),
            "--output",
            str(tmp_path / "s.csv"),
            "--n",
            "5",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    columns = pd.read_csv(tmp_path / "s.csv").columns
    assert "margin_uncertainty" in columns and "uncertainty" not in columns


def test_a_zarr_output_for_an_h5ad_input_gives_the_recipe(slide_file, tmp_path, capsys):
    code, _, err = _run(
        _fit(slide_file, tmp_path, "--labels-key", "label", "--output", str(tmp_path / "o.zarr")),
        capsys,
    )
    assert code == 2 and err.count("\n") == 1
    assert "TableModel.parse(adata)" in err and "--output" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_pretrain_scvi_reads_a_counts_table(slide_file, tmp_path, capsys):
    a = ad.read_h5ad(slide_file)
    counts = pd.DataFrame(a.X.toarray(), index=a.obs_names, columns=a.var_names)
    counts.to_csv(tmp_path / "counts.csv", index_label="cell_id")
    xy = pd.DataFrame(a.obsm["spatial"], index=a.obs_names, columns=["x", "y"])
    xy.to_csv(tmp_path / "xy.csv", index_label="cell_id")
    argv = ["pretrain-scvi", str(tmp_path / "counts.csv"), "--out", str(tmp_path / "scvi")]
    code, out, err = _run(
        [*argv, "--coordinates", str(tmp_path / "xy.csv"), "--max-epochs", "1", "--quiet"], capsys
    )
    assert code == 0, err
    assert (tmp_path / "scvi" / "model.pt").is_file() and out == ""
