"""Saving and loading a :class:`ResidualModel`: plain JSON and arrays, no code run on load.

A model folder holds ``residual_model.json`` (configuration, classes, view shapes, the guard's
report, the calibration) and the fitted predictor: ``exact_head.npz`` for the exact engine
(standardisation, each block's coefficients and intercepts; temperatures and the source share
are in the JSON), ``residual_model.pt`` (a state dict, read with ``weights_only=True``) for
the gradient engine. Folders of format 1 (every arm saved as a network, the exact one's
temperatures in an ``unscaled`` entry, solver ``"lbfgs"``) still load, and predict the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._errors import ScResidualError
from .._io import recover
from .._safe_load import check_state_fits, count_members
from ..module import EnsembleNetwork
from ._calibration import Calibration
from ._exact import Block, ExactHead
from ._gradient import build_network

FORMAT_VERSION = 2
"""On-disk format of saved models (2: the exact fit saved as an :class:`ExactHead`)."""

READABLE = (1, 2)
META, WEIGHTS, HEAD = "residual_model.json", "residual_model.pt", "exact_head.npz"


def write(model, directory: Path) -> None:
    """Write ``model``'s files into an existing directory (not atomic: see ``save``)."""
    meta = {
        "format": FORMAT_VERSION,
        "scresidual_version": __version__,
        "config": asdict(model.config),
        "options": asdict(model.options),
        "classes": model.classes_,
        "shapes": {k: list(v) for k, v in model.shapes_.items()},
        "chosen_arm": model.chosen_arm_,
        "guard_report": model.guard_report_,
        "calibration": (
            model.calibration_.to_dict()
            if model.calibration_ is not None
            else {"note": model.calibration_note_}
        ),
    }
    net = model.predictor_
    meta["n_members"] = len(net.members) if isinstance(net, EnsembleNetwork) else 1
    if isinstance(net, ExactHead):
        meta["exact_head"], arrays = _head_parts(net)
        np.savez(directory / HEAD, **arrays)
    else:
        torch.save(net.state_dict(), directory / WEIGHTS)
    (directory / META).write_text(json.dumps(meta, indent=2))


def _head_parts(head: ExactHead) -> tuple[dict, dict]:
    """The JSON part of an :class:`ExactHead` and its arrays (views by position)."""
    meta = {"arm": head.arm, "share": head.share}
    arrays = {}
    views = list(head.mean)
    for i, k in enumerate(views):
        arrays[f"mean_{i}"], arrays[f"std_{i}"] = head.mean[k], head.std[k]
    for name in head.blocks:
        b = getattr(head, name)
        meta[name] = {"views": [views.index(k) for k in b.views], "temperature": b.temperature}
        arrays[f"{name}_coef"], arrays[f"{name}_intercept"] = b.coef, b.intercept
    meta["views"] = views
    return meta, arrays


def load(cls, path: str | Path, *, progress: bool | None = None, **trainer_kwargs):
    """A :class:`ResidualModel` from a folder written by :func:`write`."""
    path = Path(path)
    recover(path)
    meta_file = path / META
    if not meta_file.is_file() or not ((path / WEIGHTS).is_file() or (path / HEAD).is_file()):
        raise ScResidualError(
            f"{path} is not a scresidual model directory (no {META} with {WEIGHTS} or {HEAD}); "
            "pass the directory written by save()."
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ScResidualError(f"{meta_file} is corrupted ({err}); refit and save again.") from err
    if not isinstance(meta, dict) or meta.get("format") not in READABLE:
        meta = meta if isinstance(meta, dict) else {}
        raise ScResidualError(
            f"{path} was written by scresidual {meta.get('scresidual_version', '?')} in "
            f"format {meta.get('format')}; this version ({__version__}) reads formats "
            f"{', '.join(map(str, READABLE))}: refit the model or install the matching version."
        )
    try:
        model = _from_meta(cls, meta, progress=progress, **trainer_kwargs)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ScResidualError(
            f"{meta_file} is corrupted ({type(err).__name__}: {err}); refit and save again."
        ) from err
    damaged = f"{path} holds missing or mismatched parts of the model; refit and save again."
    if "exact_head" in meta:
        if meta.get("n_members") != 1:  # one exact fit; sizes are trusted as files bear them
            raise ScResidualError(damaged)
        model.predictor_ = _read_head(model, meta["exact_head"], path / HEAD, damaged)
        return model
    state = _read_state(path / WEIGHTS)
    if model.config.solver == "newton-cg":  # format 1: the exact fit saved as a network
        model.predictor_ = _head_from_network(model, state, meta.get("unscaled"), damaged)
        return model
    n_members = count_members(state) if isinstance(state, dict) else 0
    if n_members != meta.get("n_members", 1):
        raise ScResidualError(
            f"{meta_file} lists {meta.get('n_members')} members but {path / WEIGHTS} holds "
            f"{n_members}; the folder is corrupted or was edited: refit and save again."
        )
    check_state_fits(lambda: _network(model, n_members), state, path)
    net = _network(model, n_members)
    net.load_state_dict(state, strict=True)
    model.predictor_ = net.eval()
    return model


def _read_state(file: Path) -> dict:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise ScResidualError(
            f"cannot read the weights in {file} ({type(err).__name__}); the file is "
            "corrupted: refit and save again."
        ) from err


def _from_meta(cls, meta: dict, **kwargs):
    """An unfitted model with the configuration, classes and shapes of ``meta``."""
    options = {**meta["config"], **meta.get("options", {})}
    if meta["format"] == 1:  # every option was saved, whatever the solver
        from ._config import split_options

        config, engine = split_options(options, legacy=True)
        options = {**config, **asdict(engine)}
    model = cls(
        **{k: options.pop(k) for k in ("arm", "sources", "residuals", "head", "guard", "seed")},
        **kwargs,
        **options,
    )
    model.classes_ = [str(c) for c in meta["classes"]]
    model.shapes_ = {k: tuple(int(d) for d in v) for k, v in meta["shapes"].items()}
    model.chosen_arm_ = str(meta["chosen_arm"])
    model.guard_report_ = meta.get("guard_report", {})
    cal = meta.get("calibration") or {}
    model.calibration_ = Calibration.from_dict(cal) if "scores" in cal else None
    model.calibration_note_ = str(cal["note"])[:500] if cal.get("note") else None
    return model


def _network(model, n_members: int):
    """The chosen arm's network, or an ensemble of ``n_members`` of them."""
    if n_members == 1:
        return build_network(model, model.chosen_arm_)
    return EnsembleNetwork([build_network(model, model.chosen_arm_) for _ in range(n_members)])


def _read_head(model, meta: dict, file: Path, damaged: str) -> ExactHead:
    """An :class:`ExactHead` from its JSON part and ``exact_head.npz``, checked.

    The arrays must fit the model's classes and view shapes.
    """
    if not file.is_file():
        raise ScResidualError(f"{file} is missing; the model directory is incomplete: refit it.")
    try:
        with np.load(file, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
        views = [str(v) for v in meta["views"]]
        blocks = {
            name: Block(
                [views[int(i)] for i in meta[name]["views"]],
                arrays[f"{name}_coef"].astype(np.float64),
                arrays[f"{name}_intercept"].astype(np.float64),
                float(meta[name]["temperature"]),
            )
            for name in ("source", "residual")
            if meta.get(name) is not None
        }
        head = ExactHead(
            str(meta["arm"]),
            {k: arrays[f"mean_{i}"].astype(np.float32) for i, k in enumerate(views)},
            {k: arrays[f"std_{i}"].astype(np.float32) for i, k in enumerate(views)},
            share=None if meta.get("share") is None else float(meta["share"]),
            **blocks,
        )
    except ScResidualError:
        raise
    except Exception as err:  # truncated zips and malformed entries raise many types
        raise ScResidualError(damaged) from err
    _check_head(model, head, damaged)
    return head


def _check_head(model, head: ExactHead, damaged: str) -> None:
    n = len(model.classes_)
    ok = head.arm == model.chosen_arm_ and bool(head.blocks)
    ok = ok and (head.share is None) == (len(head.blocks) == 1)
    ok = ok and (head.share is None or 0 <= head.share <= 1)
    for k in head.mean:
        shape = tuple(model.shapes_.get(k, (-1,)))
        ok = ok and head.mean[k].shape == shape == head.std[k].shape
        ok = ok and np.isfinite(head.mean[k]).all() and (head.std[k] > 0).all()
    for name in head.blocks if ok else ():
        b = getattr(head, name)
        width = sum(int(np.prod(model.shapes_[k])) for k in b.views)
        ok = ok and b.coef.shape == (n, width) and b.intercept.shape == (n,)
        ok = ok and np.isfinite(b.coef).all() and np.isfinite(b.intercept).all()
        ok = ok and np.isfinite(b.temperature) and b.temperature > 0
    if not ok:
        raise ScResidualError(damaged)


def _head_from_network(model, state: dict, unscaled, damaged: str) -> ExactHead:
    """A format-1 exact fit (its linear network's weights) as an :class:`ExactHead`.

    The network held ``share * source block`` and ``(1 - share) * residual block`` in its two
    head blocks and one bias; ``unscaled`` held each block's temperature and the bias
    without them. Both intercepts are recovered from the two biases.
    """
    cfg = model.config
    arm = model.chosen_arm_
    source = arm in ("refine", "linear-probe")
    residual = arm in ("refine", "scratch")
    try:
        normed = [
            (f"{p}_norm.{k}", k)
            for p, on, names in (
                ("source", source, cfg.sources),
                ("residual", residual, cfg.residuals),
            )
            if on
            for k in names
        ]
        mean = {k: state[f"{prefix}.mean"].numpy() for prefix, k in normed}
        std = {k: state[f"{prefix}.std"].numpy() for prefix, k in normed}
        u = unscaled if isinstance(unscaled, dict) else {}
        t_s = float(u.get("head_source") or 1.0)
        t_r = float(u.get("head_residual") or 1.0)
        if arm == "refine":
            share = float(model.guard_report_["refine"]["source_share"])
            w_s = state["head_source.weight"].double().numpy()
            w_r = state["head_residual.weight"].double().numpy()
            bias = state["head_residual.bias"].double().numpy()
            raw = np.asarray(u.get("bias", bias), dtype=np.float64)
            b_s, b_r = _split_bias(bias, raw, share, t_s, t_r)
            head = ExactHead(
                arm,
                mean,
                std,
                source=Block(list(cfg.sources), w_s / share if share else 0 * w_s, b_s, t_s),
                residual=Block(
                    list(cfg.residuals), w_r / (1 - share) if share < 1 else 0 * w_r, b_r, t_r
                ),
                share=share,
            )
        else:
            name = "head_source" if source else "head_residual"
            block = Block(
                list(cfg.sources if source else cfg.residuals),
                state[f"{name}.weight"].double().numpy(),
                state[f"{name}.bias"].double().numpy(),
                t_s if source else t_r,
            )
            head = ExactHead(arm, mean, std, **{"source" if source else "residual": block})
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ScResidualError(damaged) from err
    _check_head(model, head, damaged)
    return head


def _split_bias(bias, raw, share: float, t_s: float, t_r: float):
    """Intercepts ``b_s, b_r`` from the network's bias and the bias without temperatures.

    ``share b_s + (1 - share) b_r = bias``, ``share b_s / t_s + (1 - share) b_r / t_r = raw``.
    """
    gap = 1 / t_s - 1 / t_r
    if not 0 < share < 1 or abs(gap) < 1e-9:
        return bias, bias
    u = (raw - bias / t_r) / gap  # share * b_s
    return u / share, (bias - u) / (1 - share)
