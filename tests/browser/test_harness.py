"""The harness itself: a static page and JupyterLab load in headless Chromium with WebGL."""

import pytest

pytestmark = pytest.mark.slow


def test_static_page_has_webgl(page, static_server, screenshot_dir, tmp_path):
    (tmp_path / "index.html").write_text(
        "<html><head><title>harness</title></head><body><canvas id=c></canvas></body></html>"
    )
    page.goto(static_server(tmp_path) + "/index.html")
    assert page.title() == "harness"
    assert page.evaluate("() => !!document.getElementById('c').getContext('webgl2')")
    shot = screenshot_dir / "harness_static.png"
    page.screenshot(path=shot)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 0


def test_jupyterlab_answers(jupyter_server, page):
    assert jupyter_server.api("/api/status")["started"]
    page.goto(f"{jupyter_server.url}/lab?token={jupyter_server.token}")
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    assert page.evaluate("() => !!window.jupyterapp")
