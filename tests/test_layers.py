"""Imports point down the layers, and no package reaches into another's private modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scresidual"

LAYERS = [
    {"shared"},  # scresidual/_*.py: constants, errors, validation, I/O, logging, genes, tasks
    {"module"},
    {"train"},  # fits networks of module; the sources' pretraining calls it
    {"sources", "pp", "read", "datasets", "metrics"},
    {"model"},
    {"tl", "pl", "image", "text", "tabular"},
    {"stress"},
    {"cli", "_demo", "__init__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
APPS = {"cli", "_demo", "__init__"}  # top-level modules above everything


def _unit(parts: tuple[str, ...]) -> str:
    """The layer unit of a module inside the package: ``('model', '_spatial')`` → ``model``."""
    if len(parts) > 1 or (PACKAGE / parts[0]).is_dir():
        return parts[0]
    return parts[0] if parts[0] in APPS else "shared"


def _imports(rel: tuple[str, ...], source: str):
    """``(line, target module parts)`` of each scresidual import in the module ``rel``."""
    package = rel[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = (*base, *(node.module.split(".") if node.module else ()))
            elif node.module and node.module.startswith("scresidual."):
                target = tuple(node.module.split(".")[1:])
            else:
                continue
            if target:
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("scresidual."):
                    yield node.lineno, tuple(alias.name.split(".")[1:])


def _problems(rel: tuple[str, ...], source: str) -> list[str]:
    here, out = _unit(rel), []
    for line, target in _imports(rel, source):
        there = _unit(target)
        if there == here:
            continue
        if RANK[there] > RANK[here]:
            out.append(f"line {line}: {here} imports {'.'.join(target)}, a layer above")
        if there != "shared" and any(p.startswith("_") for p in target[1:]):
            out.append(f"line {line}: {here} imports the private {'.'.join(target)}")
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_imports_point_down_and_stay_public(path):
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    problems = _problems(rel, path.read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "rel, source, problem",
    [
        (("pp", "_graph"), "from ..model import ResidualModel\n", "a layer above"),
        (("image", "_pipeline"), "from ..stress import run_task\n", "a layer above"),
        (("model", "_spatial"), "from ..pp._features import PCAFeatures\n", "private"),
        (("train", "_trainer"), "from scresidual.sources import embed\n", "a layer above"),
    ],
)
def test_the_check_sees_violations(rel, source, problem):
    assert any(problem in p for p in _problems(rel, source))


def test_the_check_allows_shared_and_downward_imports():
    assert (
        _problems(
            ("model", "_spatial"),
            "from .._validate import parse_spec\nfrom ..pp import PCAFeatures\n",
        )
        == []
    )
