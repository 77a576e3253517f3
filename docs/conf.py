"""Sphinx configuration of the scresidual documentation (``sphinx-build -W docs docs/_build``)."""

from __future__ import annotations

import os
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout's package, as the tests import it

import scresidual  # noqa: E402

project = "scresidual"
author = "scresidual developers"
copyright = "2026, scresidual developers"
release = version = scresidual.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served with the site: equations render offline too
    "sphinx_autodoc_typehints",
    "sphinxarg.ext",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "generated/*.tmp", "**.ipynb_checkpoints", "tutorials/screenshots"]
templates_path = ["_templates"]

# The API reference: one page per public name of every public namespace, found at build time,
# so a new module or a name added to a namespace's ``__all__`` appears without editing docs.
NAMESPACES = sorted(
    f"scresidual.{m.name}"
    for m in pkgutil.iter_modules(scresidual.__path__)
    if not m.name.startswith("_") and m.name != "cli"
)
API_INTRO = """\
API reference
=============

``import scresidual as sr``. Every public namespace and every name in its ``__all__`` is listed
here; the pages are generated from the docstrings at each build. Package-wide defaults are in
``sr.settings`` (``verbosity``, ``progress_bar``, ``seed``, ``n_jobs``), used wherever a
function's ``progress``, ``seed`` or ``n_jobs`` is left at ``None``; bad input raises
:class:`scresidual.ScResidualError` with a one-line message.

.. autoclass:: scresidual.ScResidualError
   :no-members:

.. autosummary::
   :toctree: generated
   :template: namespace.rst

"""
_api = API_INTRO + "".join(f"   {name}\n" for name in NAMESPACES)
_page = HERE / "api.rst"  # generated here (gitignored), so autosummary scans it
if not _page.is_file() or _page.read_text() != _api:  # unchanged: no rebuild
    _page.write_text(_api)

autosummary_generate = True
autosummary_ignore_module_all = False  # a namespace's public names are its __all__
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # torch/Lightning docstrings of overridden hooks are theirs
autodoc_typehints = "description"
autoclass_content = "class"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = [("Keys written", "params_style")]
typehints_document_rtype = False
always_document_param_types = False
suppress_warnings = ["myst.header"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Notebooks run during the build (outputs never go stale); jupyter-cache reruns only the
# notebooks whose code changed. A failing cell fails the build.
nb_execution_mode = "cache"
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_execution_timeout = 900
nb_execution_in_temp = True  # notebooks that write files (an autosave) write them there
# ...so pages that read the repository's files find it here (the kernel inherits it)
os.environ["SCRESIDUAL_REPO"] = str(HERE.parent)
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

html_theme = "sphinx_book_theme"
html_title = "scresidual"
html_static_path = ["_static"]
html_theme_options = {
    "repository_url": "https://github.com/scresidual/scresidual",
    "use_repository_button": True,
    "show_toc_level": 2,
}
