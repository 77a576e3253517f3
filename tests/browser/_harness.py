"""Headless Chromium + JupyterLab, started and stopped by PID: shared by the browser tests
(through ``conftest.py``) and by ``benchmarks/_browser_timing.py``.

Playwright drives Debian's Chromium (``executable_path``; playwright's own browser download
needs internet). WebGL runs in software (SwiftShader), so jupyter-scatter draws without a GPU.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--use-gl=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
VIEWPORT = {"width": 1400, "height": 900}


def find_chromium() -> str | None:
    """``$SCRESIDUAL_CHROMIUM``, else Debian's ``/usr/bin/chromium`` (or on PATH), else None."""
    for candidate in (os.environ.get("SCRESIDUAL_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium")


def launch_browser(playwright, executable: str):
    """A headless playwright ``Browser`` on ``executable`` with software WebGL."""
    return playwright.chromium.launch(
        executable_path=executable, headless=True, args=CHROMIUM_FLAGS
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop ``proc`` and every process it started (kernels, …), by their PIDs."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        child.kill()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.is_file() else ""
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


class JupyterServer:
    """JupyterLab on 127.0.0.1 at a free port, with a random token, serving ``root_dir``.

    ``window.jupyterapp`` is exposed so that a test can run JupyterLab commands.
    """

    def __init__(self, root_dir: Path, *, timeout: float = 120.0):
        self.root_dir = Path(root_dir)
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        state = self.root_dir.parent / f".jupyter-{self.port}"
        self.runtime_dir = state / "runtime"
        self.log = state / "server.log"
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        # No news or update pop-ups over the page (they would cover widgets in screenshots).
        notices = state / "settings" / "@jupyterlab" / "apputils-extension"
        notices.mkdir(parents=True, exist_ok=True)
        (notices / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True})
        )
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--LabApp.expose_app_in_browser=True",
            f"--LabApp.workspaces_dir={state / 'workspaces'}",
            f"--LabApp.user_settings_dir={state / 'settings'}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(self.runtime_dir)}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid
        try:
            _wait_http(f"{self.url}/api/status?token={self.token}", self.proc, timeout, self.log)
        except Exception:
            self.stop()
            raise

    def api(self, path: str, method: str = "GET", body: dict | None = None):
        """JSON answer of the server's REST API at ``path``."""
        request = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}&reset"

    def kernel_client(self, notebook: str):
        """A jupyter_client connected to the running kernel of ``notebook`` (a second client:
        code it runs sees the notebook's variables)."""
        from jupyter_client import BlockingKernelClient

        sessions = [s for s in self.api("/api/sessions") if s["path"].endswith(notebook)]
        if not sessions:
            raise RuntimeError(f"no kernel runs {notebook}")
        kernel_id = sessions[0]["kernel"]["id"]
        connection = self.runtime_dir / f"kernel-{kernel_id}.json"
        client = BlockingKernelClient(connection_file=str(connection))
        client.load_connection_file()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        return client

    def stop(self) -> None:
        stop(self.proc)


def run_code(client, code: str, timeout: float = 120.0) -> str:
    """Run ``code`` in the kernel of ``client``; its stdout (raises on an error in the kernel)."""
    out: list[str] = []
    errors: list[str] = []

    def hook(msg):
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "stream" and content["name"] == "stdout":
            out.append(content["text"])
        elif kind == "error":
            errors.append("\n".join(content["traceback"]))

    client.execute_interactive(code, timeout=timeout, output_hook=hook, store_history=False)
    if errors:
        raise RuntimeError(f"kernel error running {code!r}:\n{errors[0]}")
    return "".join(out)


def write_notebook(path: Path, cells: list[str]) -> Path:
    """A notebook of code ``cells`` at ``path``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nb, path)
    return path


def open_and_run(page, server: JupyterServer, notebook: str, timeout: float = 180.0) -> None:
    """Open ``notebook`` in JupyterLab on ``page`` and run all its cells."""
    page.goto(server.notebook_url(notebook))
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
        " && window.jupyterapp.shell.currentWidget.sessionContext"
        " && window.jupyterapp.shell.currentWidget.sessionContext.session"
        " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
        " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.connectionStatus"
        " === 'connected'",
        timeout=timeout * 1000,
    )
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def cells_done(page, timeout: float = 300.0) -> None:
    """Wait until every code cell of the open notebook has run (an execution count each)."""
    page.wait_for_function(
        "() => { const p = document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt');"
        " return p.length > 0 && [...p].every(e => /\\[\\d+\\]/.test(e.textContent)); }",
        timeout=timeout * 1000,
    )


def drag_lasso(page, canvas, path: list[tuple[float, float]], steps: int = 10) -> float:
    """Drag the mouse through ``path`` (fractions of ``canvas``' box); the time it is released."""
    box = canvas.bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x0 + path[0][0] * w, y0 + path[0][1] * h)
    page.mouse.down()
    for fx, fy in path[1:]:
        page.mouse.move(x0 + fx * w, y0 + fy * h, steps=steps)
    released = time.time()
    page.mouse.up()
    return released


class StaticServer:
    """``python -m http.server`` on 127.0.0.1 at a free port, serving ``directory``."""

    def __init__(self, directory: Path, *, timeout: float = 30.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http.server",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid
        try:
            _wait_http(self.url + "/", self.proc, timeout)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        stop(self.proc)


@contextmanager
def chromium(executable: str):
    """A playwright ``Browser`` on ``executable``, closed (with playwright) at the end."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_browser(p, executable)
        try:
            yield browser
        finally:
            browser.close()
