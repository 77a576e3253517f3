import nbformat
import pytest
from nbclient import NotebookClient


@pytest.mark.slow
def test_no_tqdm_advice_in_a_notebook_without_ipywidgets(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import sys\nsys.modules['ipywidgets'] = None  # not installed"),
        nbformat.v4.new_code_cell("import scresidual as sr\nimport tqdm.auto"),
        nbformat.v4.new_code_cell("print('done')"),
    ]
    NotebookClient(nb, timeout=120, resources={"metadata": {"path": tmp_path}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "done" in text and "IProgress" not in text, text
