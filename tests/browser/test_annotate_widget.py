"""The annotation widget in a real browser: lasso, assign a region, refit (JupyterLab + Chromium).

Everything the user does goes through the page (mouse events, typing, clicks); what it did is
read back from the notebook's kernel through a second kernel client.
"""

import json
import time

import pytest
from _harness import cells_done, drag_lasso, open_and_run, run_code, write_notebook

pytestmark = pytest.mark.slow

NOTEBOOK = "annotate_widget.ipynb"
SETUP = """\
import scresidual as sr
adata = sr.datasets.lymph_node(n_slides=1, spots_per_side=20)
truth = adata.obs["region"].astype(str)
ann = sr.pl.annotate(adata, "annot", autosave="labels.csv", n_suggestions=10, height=520)
for region in ["germinal centre", "interfollicular"]:  # two regions labelled in code
    ann.select(truth.index[truth == region][:6])
    ann.assign(region)
ann.select(None)
ann.refit()
before = ann.predictions.copy()
ann"""
REGION = "medulla"


def _poll(client, expr: str, timeout: float = 120.0) -> dict:
    """Evaluate ``expr`` (JSON-able) in the kernel until it is truthy; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = json.loads(run_code(client, f"import json; print(json.dumps({expr}))"))
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_lasso_assign_refit_in_jupyterlab(jupyter_server, page, screenshot_dir):
    write_notebook(jupyter_server.root_dir / NOTEBOOK, [SETUP])
    open_and_run(page, jupyter_server, NOTEBOOK)
    cells_done(page, timeout=300)
    canvas = page.locator(".sr-annotator canvas").first
    canvas.wait_for(state="visible", timeout=60_000)
    client = jupyter_server.kernel_client(NOTEBOOK)
    try:
        assert _poll(client, "ann.message.startswith('refit on')", timeout=30)
        # A lasso (freeform polygon) over the left third of the tissue.
        path = [(0.2, 0.25), (0.42, 0.25), (0.42, 0.75), (0.2, 0.75), (0.2, 0.27)]
        drag_lasso(page, canvas, path, steps=12)
        selected = _poll(client, "len(ann.selection)", timeout=30)
        assert selected > 5, "the lasso selected nothing"
        page.locator(".sr-region input").fill(REGION)
        page.locator(".sr-assign").click()
        labelled = _poll(
            client, f"int((ann.adata.obs['annot'] == {REGION!r}).sum()) or 0", timeout=30
        )
        assert labelled == selected
        page.locator(".sr-refit").click()
        assert _poll(client, "ann.message.startswith('refit on') and not ann.refitting", 180)
        state = json.loads(
            run_code(
                client,
                "import json; print(json.dumps({"
                "'changed': int((ann.predictions != before).sum()),"
                f"'predicted': int((ann.predictions == {REGION!r}).sum()),"
                "'saved': open('labels.csv').read().count('medulla'),"
                "'pred_in_obs': bool((adata.obs['annot_pred'] == ann.predictions).all())}))",
            )
        )
        assert state["changed"] > 0 and state["predicted"] >= labelled
        assert state["saved"] == labelled and state["pred_in_obs"]
        page.locator(".sr-annotator select").first.select_option("prediction")
        page.wait_for_timeout(1500)
        shot = screenshot_dir / "annotate_widget.png"
        page.locator(".sr-annotator").screenshot(path=shot)
        print(f"screenshot: {shot}")
    finally:
        client.stop_channels()
