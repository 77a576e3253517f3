"""Read files from untrusted folders without running code, and keep their paths inside them.

Model folders travel by e-mail and shared drives: a pickle in them can run any code when it
is loaded. Everything here reads data only: torch checkpoints with ``weights_only=True`` and
an allow-list of plain data types, pickles with an unpickler that builds only dicts, lists,
strings, numbers and numpy values, and paths that must stay inside the folder naming them.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

from ._errors import ScResidualError

TRUST_HINT = (
    "pass trust_pickle=True (command line: --trust-pickle) only if you trust whoever made it"
)


def _plain_dict(default_factory=None) -> dict:
    """Read a ``defaultdict`` as a plain dict (torch's weights-only loader fills only dicts)."""
    return {}


def _data_globals() -> list:
    """Plain data types scvi-tools stores next to its weights (numpy arrays, pandas frames)."""
    import numpy as np
    import pandas as pd

    allowed: list = [
        bytes,
        dict,
        slice,
        np.ndarray,
        np.dtype,
        (_plain_dict, "collections.defaultdict"),
        pd.DataFrame,
        pd.Index,
        pd.RangeIndex,
    ]
    try:  # pandas' private rebuilders of frames (scvi-tools' training history)
        from pandas._libs.internals import _unpickle_block
        from pandas.core.indexes.base import _new_Index
        from pandas.core.internals.managers import BlockManager

        allowed += [BlockManager, _unpickle_block, _new_Index]
    except ImportError:  # another pandas layout: such files are refused with TRUST_HINT
        pass
    allowed += list({type(np.dtype(c)) for c in ["?", *"bhilqBHILQefdgFDGOUSV", "M8", "m8"]})
    # numpy's array and scalar rebuilders; files from numpy 1.x name them numpy.core.*.
    for fn in (np.zeros(1).__reduce__()[0], np.float32(0).__reduce__()[0]):
        allowed += [
            (fn, f"numpy.core.multiarray.{fn.__name__}"),
            (fn, f"numpy._core.multiarray.{fn.__name__}"),
        ]
    return allowed


def _refused_detail(err: Exception) -> str:
    """What a weights-only load refused, from torch's long message (one line)."""
    text = str(err)
    m = re.search(r"GLOBAL ([\w.]+)|but got (<class [^>]+>)", text)
    if m:
        return m.group(1) or m.group(2)
    detail = text.partition("WeightsUnpickler error:")[2].strip() or text.strip()
    return detail.splitlines()[0][:120] if detail else type(err).__name__


def torch_load_data(path: Path, *, trust_pickle: bool = False, fix: str) -> object:
    """``torch.load`` that builds tensors and plain data only, unless ``trust_pickle``.

    Parameters
    ----------
    path
        The checkpoint.
    trust_pickle
        Load with full pickle (may run code stored in the file); only for trusted files.
    fix
        What to do when the file is damaged, for the error message.

    """
    import torch

    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_data_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ScResidualError(
            f"{path} holds Python objects beyond plain data ({_refused_detail(err)}); loading "
            f"them could run code, so it is refused: {TRUST_HINT}."
        ) from err
    except Exception as err:  # truncated or foreign files raise many types
        raise ScResidualError(
            f"cannot read {path} ({type(err).__name__}); the file is corrupted: {fix}."
        ) from err


# ---------------------------------------------------------------------------- pickled dicts
def _plain_globals() -> dict:
    """The only globals a plain-data pickle may name; none can build any other type.

    Numpy scalars and arrays (Geneformer's median dictionaries hold ``numpy.float32``
    values, CIFAR batches arrays) and the bytes rebuilder of protocol-2 pickles.
    """
    import codecs

    import numpy as np

    scalar, reconstruct = np.float32(0).__reduce__()[0], np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 arrays
    allowed = {
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[f"{core}.multiarray", "scalar"] = scalar
        allowed[f"{core}.multiarray", "_reconstruct"] = reconstruct
        allowed[f"{core}.numeric", "_frombuffer"] = frombuffer
    return allowed


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings, numbers and numpy values: nothing that runs code."""

    def find_class(self, module: str, name: str):
        found = _plain_globals().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent id")


def read_plain_pickle(path: Path, *, what: str, fix: str, encoding: str = "ASCII") -> object:
    """Unpickle ``path`` allowing only plain data (see :class:`_PlainUnpickler`).

    ``encoding`` decodes Python 2 strings, as in :func:`pickle.load`.
    """
    try:
        with open(path, "rb") as f:
            return _PlainUnpickler(io.BytesIO(f.read()), encoding=encoding).load()
    except pickle.UnpicklingError as err:
        raise ScResidualError(
            f"the {what} {path} holds a Python object ({err}) rather than plain data; refused "
            f"because loading it could run code: {fix}."
        ) from err
    except OSError:  # unreadable, not damaged: the operating system's message says why
        raise
    except Exception as err:  # truncated pickles raise many types
        raise ScResidualError(
            f"cannot read the {what} {path} ({type(err).__name__}); {fix}."
        ) from err


# ---------------------------------------------------------------------------- paths
def path_inside(root: Path, relative: str, *, what: str) -> Path:
    """``root / relative``, refusing absolute paths, ``..`` and symlinks that leave ``root``."""
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise ScResidualError(
            f"{what} names {relative!r}, a path outside its folder {root}; refused: a model "
            "folder may only refer to files inside it (refit or re-save the model)."
        )
    full = root / rel
    real_root = root.resolve()
    if not full.resolve().is_relative_to(real_root):
        raise ScResidualError(
            f"{what} names {relative!r}, a link leading outside its folder {root}; refused: "
            "replace the link with a copy of its target (or refit the model)."
        )
    return full


# ---------------------------------------------------------------------------- sizes
def count_members(state: dict, prefix: str = "members.") -> int:
    """Members of an ensemble's state dict (``members.<i>.…`` keys), 1 for a single network."""
    ids = {k[len(prefix) :].partition(".")[0] for k in state if k.startswith(prefix)}
    return len(ids) or 1


def check_state_fits(build, state: dict, where: Path) -> None:
    """Raise unless ``state`` has exactly the tensors of ``build()``.

    ``build()`` runs on torch's meta device (no memory), so sizes read from metadata never
    allocate more than the weights file holds.
    """
    import torch

    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    except (TypeError, ValueError, KeyError, RuntimeError, IndexError) as err:
        raise ScResidualError(
            f"the metadata in {where} is corrupted ({type(err).__name__}); refit and save again."
        ) from err
    got = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    if expected != got:
        bad = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        raise ScResidualError(
            f"the weights in {where} do not match its metadata (e.g. {bad[0]}); the folder is "
            "corrupted or was edited: refit and save again."
        )


# ---------------------------------------------------------------------------- spatial setup
_SETUP_TYPES = {
    "labels_key": str,
    "sources": list,
    "features": list,
    "graph": str,
    "n_hops": int,
    "aggregate_sources": bool,
    "encoder": str,
    "library_key": (str, type(None)),
    "spatial_key": str,
    "layer": (str, type(None)),
    "n_comps": int,
}
_OPTIONAL_SETUP_TYPES = {"gradients": bool, "side_features": list}
"""Setup keys that models saved before them lack."""


def check_spatial_setup(
    setup, file: Path, *, n_sources: int, n_features: int, n_side_features: int = 0
) -> dict:
    """Raise unless ``setup`` (read from ``file``) is complete and fits the saved network.

    Every key must be there with the right type, with as many sources and features as the
    network reads.
    """
    if not isinstance(setup, dict):
        raise ScResidualError(f"{file} is corrupted (not a JSON object); refit the model.")
    missing = [k for k in _SETUP_TYPES if k not in setup]
    wrong = [k for k, t in _SETUP_TYPES.items() if k in setup and not isinstance(setup[k], t)]
    wrong += [k for k, t in _OPTIONAL_SETUP_TYPES.items() if not isinstance(setup.get(k, t()), t)]
    if missing or wrong:
        what = f"lacks {', '.join(missing)}" if missing else f"has a bad {', '.join(wrong)}"
        raise ScResidualError(f"{file} {what}; the model folder is damaged: refit the model.")
    side = setup.get("side_features", [])
    specs = [*setup["sources"], *setup["features"], *side]
    if not all(isinstance(s, str) for s in specs) or (
        len(setup["sources"]),
        len(setup["features"]),
        len(side),
    ) != (n_sources, n_features, n_side_features):
        raise ScResidualError(
            f"the sources/features in {file} do not match the saved network; the model folder "
            "is damaged: refit the model."
        )
    return setup
