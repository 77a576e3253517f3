import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.slow
def test_readme_snippet_runs_as_written(tmp_path, monkeypatch):
    code = _python_blocks(README.read_text())[0]  # the quick start (later ones are sketches)
    monkeypatch.chdir(tmp_path)  # the snippet writes scvi_model/ and model_dir/
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    new_slide = namespace["new_slide"]
    assert new_slide.obs["region_pred"].notna().all()
    assert (new_slide.obs["region_pred"] == new_slide.obs["region"]).mean() > 0.5
    assert (tmp_path / "model_dir" / "sources").is_dir()  # the source travels with the model
