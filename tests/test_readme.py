import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_is_an_entry_point_of_at_most_6_kib():
    assert len(README.read_bytes()) <= 6144


def test_readme_gives_the_test_command_that_ci_runs():
    readme, ci = README.read_text(), (ROOT / ".ci" / "run").read_text()
    tests = readme.split("## Tests", 1)[1]
    assert "python -m pytest -q" in tests and "python -m pytest -q" in ci
    assert 'pip install -e ".[test,docs]"' in tests and '-e ".[test,docs]"' in ci
    assert "scresidual demo" in readme  # the main job, from the install section


@pytest.mark.slow
def test_readme_snippet_runs_as_written_and_reruns(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    code = _python_blocks(README.read_text())[0]  # the quick start
    monkeypatch.chdir(tmp_path)  # the snippet writes scvi_model/ and model_dir/
    for _ in range(2):  # a rerun replaces the snippet's own folders
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)
    new_slide = namespace["new_slide"]
    assert new_slide.obs["region_pred"].notna().all()
    assert (new_slide.obs["region_pred"] == new_slide.obs["region"]).mean() > 0.5
    assert (tmp_path / "model_dir" / "sources").is_dir()  # the source travels with the model
