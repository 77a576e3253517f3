"""Browser test harness: Debian's Chromium driven by playwright, a JupyterLab server, a static
file server and a screenshot folder, each started once and stopped by PID.

Outside CI (env ``CI`` unset) the tests skip when Chromium or playwright is missing; in CI
they fail loudly.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI: .ci/run installs it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    path = _harness.find_chromium()
    if path is None:
        _missing("Chromium not found: apt-get install chromium, or set $SCRESIDUAL_CHROMIUM")
    return path


@pytest.fixture(scope="session")
def browser(chromium_executable):
    if importlib.util.find_spec("playwright") is None:
        _missing("playwright not installed: pip install playwright (the test extra)")
    with _harness.chromium(chromium_executable) as b:
        yield b


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=_harness.VIEWPORT)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    folder = Path(os.environ.get("SCRESIDUAL_SCREENSHOTS") or REPO / "tests/browser/screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory):
    if importlib.util.find_spec("jupyterlab") is None:
        _missing("jupyterlab not installed: pip install jupyterlab (the test extra)")
    root = tmp_path_factory.mktemp("jupyter") / "root"
    root.mkdir()
    server = _harness.JupyterServer(root)
    yield server
    server.stop()


@pytest.fixture
def static_server():
    servers = []

    def serve(directory) -> str:
        servers.append(_harness.StaticServer(Path(directory)))
        return servers[-1].url

    yield serve
    for server in servers:
        server.stop()
