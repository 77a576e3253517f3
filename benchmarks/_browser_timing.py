"""Browser timings of the annotation widget on a generated slide (headless Chromium, JupyterLab).

``browser_timings(n_cells, out_dir)`` generates a slide with ``scale.py``'s generator in the
notebook's kernel, then times

* **render**: the widget cell starts executing → the points are drawn on the canvas (the
  canvas, captured by the browser, shows cells in more than 2% of its pixels);
* **lasso**: the mouse is released at the end of a lasso drawn with mouse events → the
  selection is in Python (``len(ann.selection) > 0`` in the kernel).

It uses the browser test harness (``tests/browser/_harness.py``): Debian's Chromium with
software WebGL, JupyterLab on 127.0.0.1, both stopped by PID.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "browser"))
import _harness  # noqa: E402

NOTEBOOK = "browser_timing.ipynb"
DRAWN_SHARE = 0.02
"""Share of the canvas's pixels that must show cells for the points to count as drawn."""


def _cells(n_cells: int) -> list[str]:
    return [
        f"import sys, time\nsys.path.insert(0, {str(HERE)!r})\nfrom scale import make_slide\n"
        "import scresidual as sr\n"
        f"adata = make_slide({int(n_cells)})",
        "t_render = time.time()\n"
        "ann = sr.pl.annotate(adata, 'region', height=700)\n"
        "t_widget = time.time()\n"
        "ann",
    ]


def _drawn_share(canvas) -> float:
    """Share of the canvas's pixels that are not the white background."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"))
    return float((image < 235).mean())


def _kernel_value(client, expr: str):
    return json.loads(_harness.run_code(client, f"import json; print(json.dumps({expr}))"))


def browser_timings(n_cells: int, out_dir, *, timeout: float = 600.0) -> dict:
    """Render and lasso times (seconds) of the widget on a generated slide of ``n_cells``.

    ``out_dir`` holds the JupyterLab root, its log and a screenshot (``widget_<n>.png``).
    """
    out_dir = Path(out_dir)
    root = out_dir / f"jupyter_{n_cells}"
    root.mkdir(parents=True, exist_ok=True)
    chromium = _harness.find_chromium()
    if chromium is None:
        raise RuntimeError("Chromium not found: apt-get install chromium")
    _harness.write_notebook(root / NOTEBOOK, _cells(n_cells))
    server = _harness.JupyterServer(root)
    try:
        with _harness.chromium(chromium) as browser:
            page = browser.new_context(viewport=_harness.VIEWPORT).new_page()
            _harness.open_and_run(page, server, NOTEBOOK)
            canvas = page.locator(".sr-annotator canvas").first
            canvas.wait_for(state="visible", timeout=timeout * 1000)
            while _drawn_share(canvas) < DRAWN_SHARE:
                page.wait_for_timeout(100)
            drawn = time.time()
            client = server.kernel_client(NOTEBOOK)
            try:
                t_render, t_widget = _kernel_value(client, "[t_render, t_widget]")
                path = [(0.3, 0.3), (0.55, 0.3), (0.55, 0.55), (0.3, 0.55), (0.3, 0.32)]
                released = _harness.drag_lasso(page, canvas, path)
                deadline = released + timeout
                while not (selected := _kernel_value(client, "len(ann.selection)")):
                    if time.time() > deadline:
                        raise RuntimeError("the lasso selection never reached Python")
                    time.sleep(0.05)
                lasso = time.time() - released
            finally:
                client.stop_channels()
            page.locator(".sr-annotator").screenshot(path=out_dir / f"widget_{n_cells}.png")
    finally:
        server.stop()
    return {
        "n_cells": int(n_cells),
        "render_s": round(drawn - t_render, 2),
        "python_widget_s": round(t_widget - t_render, 2),
        "lasso_s": round(lasso, 2),
        "lasso_selected": int(selected),
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--out", default="/tmp/browser_timing")
    args = parser.parse_args()
    print(json.dumps(browser_timings(args.cells, args.out)))
