"""The documentation site: built with -W, opened in headless Chromium, no broken internal link."""

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "docs" / "_build" / "html"


@pytest.fixture(scope="module")
def site() -> Path:
    # Incremental: after .ci/run's build (or an earlier run) only changed pages are rebuilt,
    # and myst-nb's cache reruns only notebooks whose code changed.
    cmd = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "docs", str(SITE)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return SITE


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for key in ("href", "src"):
            if attrs.get(key) and (tag == "a" or key == "src"):
                self.hrefs.append(attrs[key])


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_no_internal_link_is_broken(site):
    # _static holds the theme's template macros, not pages
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)
    parsed = {p: _parse(p) for p in pages}
    broken = []
    for page, links in parsed.items():
        for href in links.hrefs:
            if urlparse(href).scheme or href.startswith(("mailto:", "//", "javascript:")):
                continue  # external
            target, anchor = urldefrag(urljoin(page.as_uri(), href))
            path = Path(unquote(urlparse(target).path))
            if path.is_dir():
                path = path / "index.html"
            if not path.is_file():
                broken.append(f"{page.relative_to(site)}: {href} (no file)")
            elif anchor and path.suffix == ".html":
                ids = parsed[path].ids if path in parsed else _parse(path).ids
                if unquote(anchor) not in ids:
                    broken.append(f"{page.relative_to(site)}: {href} (no anchor)")
    assert len(pages) > 20  # the API pages are there
    assert not broken, "\n".join(broken[:50])


def test_index_and_a_tutorial_render_in_chromium(site, page, static_server, screenshot_dir):
    base = static_server(site)
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{base}/index.html")
    assert "scresidual" in page.title()
    nav = page.locator("nav a.reference.internal").all_inner_texts()
    for title in ("Tutorials", "API reference", "The method", "Benchmarks", "Command line"):
        assert title in nav, nav
    shot = screenshot_dir / "docs_index.png"
    page.screenshot(path=shot, full_page=True)
    print(f"screenshot: {shot}")
    # Every internal link of the index answers (the server, not only the file system).
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
    for href in {urldefrag(h)[0] for h in hrefs if h.startswith(base)}:
        assert page.request.get(href).ok, href

    page.goto(f"{base}/tutorials/lymph_node_regions.html")
    page.wait_for_load_state("networkidle")
    outputs = page.locator("div.cell_output")
    assert outputs.count() > 3  # executed during the build: outputs are on the page
    assert page.locator("div.cell_output img").count() >= 1  # its figures
    assert "Traceback" not in page.inner_text("main")
    shot = screenshot_dir / "docs_tutorial.png"
    page.screenshot(path=shot, full_page=True)
    print(f"screenshot: {shot}")
    assert not errors, errors


def test_rendered_tutorials_show_no_warnings(site):
    # stderr of executed cells (tqdm's advice, library warnings) would show as "output stderr"
    pages = sorted((site / "tutorials").glob("*.html"))
    assert pages
    leaked = [p.name for p in pages if 'class="output stderr"' in p.read_text(encoding="utf-8")]
    assert not leaked, leaked
