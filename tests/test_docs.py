"""Shared parameter descriptions: ``{doc_…}`` placeholders filled by ``doc_params``."""

import ast
import inspect
import re
from pathlib import Path

import pytest

import scresidual
from scresidual._docs import doc_min_overlap_model, doc_params

PLACEHOLDER = re.compile(r"^[ \t]*\{(doc_\w+)\}[ \t]*$", re.M)


def test_doc_params_indents_each_line_to_the_placeholder():
    @doc_params(doc_min_overlap_model=doc_min_overlap_model)
    def f(min_overlap=0.5):
        """Do it, from ``{train,test}``.

        Parameters
        ----------
        min_overlap
            {doc_min_overlap_model}

        """

    lines = f.__doc__.splitlines()
    i = lines.index("        min_overlap")
    assert lines[i + 1].startswith("            Smallest fraction")
    assert lines[i + 2].startswith("            zero-filled")
    assert "{train,test}" in f.__doc__  # other braces are left alone


def test_doc_params_refuses_missing_and_unused_texts():
    def f():
        """Summary.

        {doc_nope}
        """

    with pytest.raises(KeyError, match="doc_nope"):
        doc_params(doc_other="text")(f)

    def g():
        """Summary."""

    with pytest.raises(KeyError, match="no placeholder"):
        doc_params(doc_other="text")(g)


def _unfilled(path: Path) -> list[str]:
    """Placeholders in docstrings of objects that no ``doc_params`` decorator fills."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        wanted = set(PLACEHOLDER.findall(ast.get_docstring(node, clean=False) or ""))
        given = {
            kw.arg
            for d in node.decorator_list
            if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "doc_params"
            for kw in d.keywords
        }
        out += [f"{path.name}:{node.lineno} {node.name}: {{{n}}}" for n in sorted(wanted - given)]
    return out


def test_every_placeholder_has_a_decorator_that_fills_it():
    # Static, so it covers modules whose imports are heavy; a missing text fails at import.
    package = Path(scresidual.__file__).parent
    left = [
        p
        for path in sorted(package.rglob("*.py"))
        if path.name != "_docs.py"
        for p in _unfilled(path)
    ]
    assert not left, "\n".join(left)


def test_filled_docstrings_read_as_written():
    doc = inspect.getdoc(scresidual.pl.regions)
    assert "{doc_" not in doc
    assert "spatial_key\n    ``obsm`` key of the coordinates." in doc


def test_every_public_name_has_a_summary_line_for_the_api_pages():
    # docs/conf.py documents every public namespace's __all__: each name needs a docstring.
    import importlib
    import pkgutil

    missing = []
    for info in pkgutil.iter_modules(scresidual.__path__):
        if info.name.startswith("_") or info.name == "cli":
            continue
        module = importlib.import_module(f"scresidual.{info.name}")
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            doc = inspect.getdoc(obj) if callable(obj) or inspect.isclass(obj) else "data"
            if not (doc or "").strip():
                missing.append(f"scresidual.{info.name}.{name}")
    assert not missing, missing
