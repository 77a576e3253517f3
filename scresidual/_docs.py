"""Parameter descriptions shared by several docstrings, filled in by :func:`doc_params`.

Keep the parameter's name in the docstring (linters check that every parameter is
described), write the placeholder alone on the line below it, where its description goes
(``layer``, then ``{doc_layer}`` indented one level deeper), and decorate the function or
class with ``@doc_params(doc_layer=doc_layer)``.

:func:`doc_params` indents every line of the text to the placeholder's column. Only
whole-line placeholders are filled, so other braces in a docstring (``{train,test}``) need
no escaping, unlike :meth:`str.format`. A description without its name also fits a
parameter that is named differently (``min_gene_overlap``: ``{doc_min_overlap_model}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "doc_copy",
    "doc_key_added_obsm",
    "doc_layer",
    "doc_layer_counts",
    "doc_library_key_slide",
    "doc_min_overlap",
    "doc_min_overlap_model",
    "doc_params",
    "doc_progress",
    "doc_return_fig",
    "doc_save",
    "doc_seed",
    "doc_seed_settings",
    "doc_show",
    "doc_spatial_key",
]

T = TypeVar("T")

doc_layer = "Layer to read instead of ``X``."
doc_layer_counts = "Layer with raw counts to read instead of ``X`` (default ``X``)."
doc_min_overlap = "Smallest fraction of the query's genes that must be in the model's vocabulary."
doc_min_overlap_model = """\
Smallest fraction of the model's genes that must be in the query (the others are
zero-filled)."""
doc_seed = "Random seed; the same seed gives the same result."
doc_seed_settings = "Random seed (default :attr:`scresidual.settings.seed`)."
doc_progress = "Show progress bars (default :attr:`scresidual.settings.progress_bar`)."
doc_key_added_obsm = "``obsm`` key to write."
doc_copy = "Return a copy instead of writing into ``adata``."
doc_spatial_key = "``obsm`` key of the coordinates."
doc_library_key_slide = (
    "Show only the cells of ``slide`` in ``obs[library_key]`` (default: every cell)."
)
doc_show = """\
Call :func:`matplotlib.pyplot.show` and return ``None``. By default the plot is not shown
and its axes are returned (notebooks display the figure anyway)."""
doc_save = """\
Write the figure to this file, format from the suffix (``.png``, ``.pdf``, …), atomically:
a reader never sees half a file."""
doc_return_fig = "Return the :class:`~matplotlib.figure.Figure` instead of the axes."

_PLACEHOLDER = re.compile(r"^([ \t]*)\{(\w+)\}[ \t]*$", re.M)


def doc_params(**texts: str) -> Callable[[T], T]:
    """Decorator filling whole-line ``{name}`` placeholders in a docstring with ``texts``.

    Raises ``KeyError`` at import time for a placeholder without a text or a text without a
    placeholder, so a typo cannot leave ``{doc_…}`` in the documentation.
    """
    used: set[str] = set()

    def fill(match: re.Match) -> str:
        indent, name = match.groups()
        if name not in texts:
            raise KeyError(f"no text given for the placeholder {{{name}}}")
        used.add(name)
        return "\n".join(indent + line if line else line for line in texts[name].splitlines())

    def decorate(obj: T) -> T:
        used.clear()
        if obj.__doc__ is not None:  # None under python -OO
            obj.__doc__ = _PLACEHOLDER.sub(fill, obj.__doc__)
            if set(texts) - used:
                raise KeyError(f"{obj!r} has no placeholder for {sorted(set(texts) - used)}")
        return obj

    return decorate
