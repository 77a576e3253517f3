"""Frozen scGPT: load a published checkpoint folder without the ``scgpt`` package.

The folder is laid out as the scGPT project distributes its pretrained models
(e.g. ``scGPT_human``)::

    model_dir/
        args.json      # training arguments: embsize, nheads, d_hid, nlayers, n_bins, ...
        vocab.json     # {gene symbol or special token: token id}
        best_model.pt  # torch state dict of scgpt.model.TransformerModel

The encoder below re-implements ``scgpt.model.TransformerModel`` with the same parameter names
so the published state dict loads strictly. Cell embeddings follow
``scgpt.tasks.get_batch_cell_embeddings``: ``<cls>`` + non-zero genes, per-cell value binning,
the transformer output at ``<cls>``, L2-normalised.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from anndata import AnnData
from torch import Tensor, nn

from .._docs import doc_layer_counts, doc_min_overlap, doc_params
from .._errors import ScResidualError
from .._genes import MIN_VOCAB_OVERLAP
from .._normalise import log1p_normalise
from ._base import FrozenSource
from ._torch import (
    _as_device,
    _batches,
    _freeze,
    _gene_ids,
    _match_genes,
    _matrix,
)

logger = logging.getLogger(__name__)

ARGS_FILE = "args.json"
VOCAB_FILE = "vocab.json"
MODEL_FILE = "best_model.pt"
PAD_TOKEN = "<pad>"
CLS_TOKEN = "<cls>"
SPECIAL_TOKENS = (PAD_TOKEN, CLS_TOKEN, "<eoc>")
"""Appended to the vocabulary when missing, in this order (as ``scgpt.tasks.embed_data``)."""

DEFAULT_MAX_SEQ_LEN = 1200
"""``max_length`` default of ``scgpt.tasks.embed_data`` (also ``max_seq_len`` of scGPT_human)."""

IGNORED_PREFIXES = ("cls_decoder.", "grad_reverse_discriminator.", "batch_encoder.", "dsbn.")
"""Checkpoint prefixes skipped on load.

These are fine-tuning task heads (cell-type classifier, batch discriminator) and batch-label
conditioning modules; their shapes depend on the fine-tuning labels and none lies on the
``<cls>`` embedding path, which scGPT's own ``embed_data`` builds with ``n_cls=1``,
``do_dab=False``, ``use_batch_labels=False`` and ``domain_spec_batchnorm=False``. Every other
key (encoders, transformer, expression/MVC decoders, flag encoder) must match exactly.
"""

# flash-attn checkpoints (FlashMHA, the layout of the published scGPT_human weights) store the
# packed q/k/v projection as ``Wqkv`` in the same row order as nn.MultiheadAttention's in_proj.
_FLASH_RENAMES = (
    (re.compile(r"\.self_attn\.(?:_impl\.)?Wqkv\.weight$"), ".self_attn.in_proj_weight"),
    (re.compile(r"\.self_attn\.(?:_impl\.)?Wqkv\.bias$"), ".self_attn.in_proj_bias"),
    (re.compile(r"\.self_attn\._impl\.out_proj\."), ".self_attn.out_proj."),
)


# --------------------------------------------------------------------------- architecture
class _GeneEncoder(nn.Module):
    """Token embedding + LayerNorm (``encoder.embedding`` / ``encoder.enc_norm``)."""

    def __init__(self, n_tokens: int, d_model: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.enc_norm(self.embedding(x))


class _ContinuousValueEncoder(nn.Module):
    """MLP on the scalar value (``value_encoder.linear1/linear2/norm``)."""

    def __init__(self, d_model: int, max_value: float = 512.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.max_value = max_value

    def forward(self, x: Tensor) -> Tensor:
        x = torch.clamp(x.unsqueeze(-1), max=self.max_value)
        return self.norm(self.linear2(self.activation(self.linear1(x))))


class _CategoryValueEncoder(nn.Module):
    """Embedding of binned values (``value_encoder.embedding/enc_norm``)."""

    def __init__(self, n_bins: int, d_model: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_bins, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.enc_norm(self.embedding(x.long()))


class _EncoderLayer(nn.Module):
    """One transformer block with torch's ``TransformerEncoderLayer`` parameter names.

    ``norm_scheme="post"`` is ``nn.TransformerEncoderLayer`` (ReLU, post-norm), identical to
    scGPT's ``FlashTransformerEncoderLayer`` in post-norm mode; ``"pre"`` reproduces the latter's
    pre-norm variant exactly (the residual branch starts from the normalised input).
    """

    def __init__(self, d_model: int, nhead: int, d_hid: int, norm_scheme: str = "post") -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm_scheme = norm_scheme

    def _attn(self, x: Tensor, pad_mask: Tensor | None) -> Tensor:
        return self.self_attn(x, x, x, key_padding_mask=pad_mask, need_weights=False)[0]

    def _ff(self, x: Tensor) -> Tensor:
        return self.linear2(torch.relu(self.linear1(x)))

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        if self.norm_scheme == "pre":
            x = self.norm1(x)
            x = x + self._attn(x, pad_mask)
            x = self.norm2(x)
            return x + self._ff(x)
        x = self.norm1(x + self._attn(x, pad_mask))
        return self.norm2(x + self._ff(x))


class _TransformerEncoder(nn.Module):
    """Stack of :class:`_EncoderLayer` under ``transformer_encoder.layers.N``."""

    def __init__(self, layers: list[_EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, pad_mask)
        return x


def _mlp3(d_in: int, d_model: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, d_model),
        nn.LeakyReLU(),
        nn.Linear(d_model, d_model),
        nn.LeakyReLU(),
        nn.Linear(d_model, 1),
    )


class _ExprDecoder(nn.Module):
    """Expression decoder (``decoder.fc``, optional ``decoder.zero_logit``); not used to embed."""

    def __init__(self, d_in: int, d_model: int, explicit_zero_prob: bool = False) -> None:
        super().__init__()
        self.fc = _mlp3(d_in, d_model)
        if explicit_zero_prob:
            self.zero_logit = _mlp3(d_in, d_model)


class _MVCDecoder(nn.Module):
    """Masked-value-for-cell-embedding decoder (``mvc_decoder.*``); not used to embed."""

    def __init__(self, d_model: int, d_in: int, style: str, zero_prob: bool, d_query: int) -> None:
        super().__init__()
        self.gene2query = nn.Linear(d_model, d_query)
        if style == "inner product":
            self.W = nn.Linear(d_model, d_in, bias=False)
            if zero_prob:
                self.W_zero_logit = nn.Linear(d_model, d_in)
        else:  # "concat query" / "sum query"
            fc1_in = d_model + d_query if style == "concat query" else d_model
            self.fc1 = nn.Linear(fc1_in, 64)
            self.hidden_activation = nn.PReLU()
            self.fc2 = nn.Linear(64, 1)


class ScGPTModel(nn.Module):
    """The encoder of ``scgpt.model.TransformerModel`` with upstream parameter names.

    Parameters
    ----------
    n_tokens
        Vocabulary size (rows of ``encoder.embedding.weight``).
    d_model
        ``embsize``.
    nhead
        ``nheads``.
    d_hid
        Feed-forward width.
    nlayers
        Number of transformer blocks.
    input_emb_style
        ``"continuous"``, ``"category"`` or ``"scaling"``.
    n_input_bins
        Value-embedding rows for ``"category"``.
    pad_value
        Value of ``<cls>``/padding positions (padding index for ``"category"`` when >= 0).
    padding_idx
        Padding index of the gene embedding (upstream leaves it ``None``).
    norm_scheme
        ``"post"`` or ``"pre"``.
    heads
        Optional non-embedding modules to build so the checkpoint loads strictly: keys
        ``decoder_in``, ``explicit_zero_prob``, ``mvc`` (dict with ``style``, ``d_in``,
        ``zero_prob``, ``d_query``).

    """

    def __init__(
        self,
        n_tokens: int,
        d_model: int,
        nhead: int,
        d_hid: int,
        nlayers: int,
        *,
        input_emb_style: str = "continuous",
        n_input_bins: int | None = None,
        pad_value: float = -2,
        padding_idx: int | None = None,
        norm_scheme: str = "post",
        heads: Mapping | None = None,
    ) -> None:
        super().__init__()
        heads = dict(heads or {})
        self.d_model = d_model
        self.input_emb_style = input_emb_style
        self.encoder = _GeneEncoder(n_tokens, d_model, padding_idx=padding_idx)
        self.flag_encoder = nn.Embedding(2, d_model)
        if input_emb_style == "continuous":
            self.value_encoder: nn.Module = _ContinuousValueEncoder(d_model)
        elif input_emb_style == "category":
            pad_idx = int(pad_value) if pad_value >= 0 else None
            self.value_encoder = _CategoryValueEncoder(int(n_input_bins), d_model, pad_idx)
        elif input_emb_style == "scaling":
            self.value_encoder = nn.Identity()
        else:
            raise ScResidualError(
                f"unknown input_emb_style {input_emb_style!r} in args.json; scGPT supports "
                "'continuous', 'category' and 'scaling'."
            )
        self.transformer_encoder = _TransformerEncoder(
            [_EncoderLayer(d_model, nhead, d_hid, norm_scheme) for _ in range(nlayers)]
        )
        self.decoder = _ExprDecoder(
            heads.get("decoder_in", d_model), d_model, heads.get("explicit_zero_prob", False)
        )
        mvc = heads.get("mvc")
        if mvc is not None:
            self.mvc_decoder = _MVCDecoder(
                d_model, mvc["d_in"], mvc["style"], mvc["zero_prob"], mvc["d_query"]
            )

    def forward(self, genes: Tensor, values: Tensor, pad_mask: Tensor) -> Tensor:
        """Transformer output ``(batch, seq_len, d_model)`` (scGPT's ``_encode``)."""
        x = self.encoder(genes)
        v = self.value_encoder(values)
        x = x * v.unsqueeze(2) if self.input_emb_style == "scaling" else x + v
        return self.transformer_encoder(x, pad_mask)


# --------------------------------------------------------------------------- loading helpers
def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise ScResidualError(
            f"cannot read {path} ({type(err).__name__}); re-download the scGPT {what}."
        ) from err
    if not isinstance(data, dict):
        raise ScResidualError(f"{path} is not a JSON object; re-download the scGPT {what}.")
    return data


def _read_vocab(path: Path) -> dict[str, int]:
    raw = _read_json(path, "vocabulary (vocab.json)")
    try:
        vocab = {str(k): int(v) for k, v in raw.items()}
    except (TypeError, ValueError) as err:
        raise ScResidualError(
            f"{path} must map gene symbols to integer token ids; re-download vocab.json."
        ) from err
    for tok in SPECIAL_TOKENS:  # as scgpt's embed_data: append missing special tokens
        if tok not in vocab:
            vocab[tok] = len(vocab)
    return vocab


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ScResidualError(
            f"cannot load {path} as a torch state dict ({type(err).__name__}); the file is "
            "corrupted or not an scGPT checkpoint, re-download best_model.pt."
        ) from err
    if isinstance(obj, Mapping):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, Tensor) for v in obj.values())
    ):
        raise ScResidualError(
            f"{path} does not hold a state dict of tensors; use the best_model.pt of an scGPT "
            "model folder."
        )
    return {str(k): v for k, v in obj.items()}


def normalise_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Map an upstream scGPT state dict onto :class:`ScGPTModel`'s parameter names.

    Strips a ``module.`` (DistributedDataParallel) prefix, renames flash-attention
    ``self_attn.Wqkv`` / ``self_attn._impl.*`` keys to ``nn.MultiheadAttention`` names, casts to
    float32 and drops :data:`IGNORED_PREFIXES`.

    Returns
    -------
    The renamed state dict and the list of ignored keys.

    """
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        for pattern, repl in _FLASH_RENAMES:
            key = pattern.sub(repl, key)
        if key.startswith(IGNORED_PREFIXES):
            ignored.append(key)
            continue
        out[key] = value.float() if value.is_floating_point() else value
    return out, ignored


def _head_spec(state: Mapping[str, Tensor], d_model: int) -> dict:
    """Shapes of the non-embedding heads present in the checkpoint."""
    heads: dict = {}
    fc0 = state.get("decoder.fc.0.weight")
    if fc0 is not None and fc0.ndim == 2:
        heads["decoder_in"] = int(fc0.shape[1])
    heads["explicit_zero_prob"] = "decoder.zero_logit.0.weight" in state
    g2q = state.get("mvc_decoder.gene2query.weight")
    if g2q is not None and g2q.ndim == 2:
        W = state.get("mvc_decoder.W.weight")
        if W is not None and W.ndim == 2:
            style, d_in = "inner product", int(W.shape[0])
        else:
            fc1 = state.get("mvc_decoder.fc1.weight")
            wide = fc1 is not None and fc1.ndim == 2 and int(fc1.shape[1]) != d_model
            style, d_in = ("concat query" if wide else "sum query"), d_model
        heads["mvc"] = {
            "style": style,
            "d_in": d_in,
            "zero_prob": "mvc_decoder.W_zero_logit.weight" in state,
            "d_query": int(g2q.shape[0]),
        }
    return heads


def _config_value(args: Mapping, *names: str, default=None, required: bool = False):
    for name in names:
        if name in args and args[name] is not None:
            return args[name]
    if required:
        raise ScResidualError(
            f"args.json has no {names[0]!r}; use the args.json shipped with the scGPT checkpoint."
        )
    return default


def _load_strict(model: nn.Module, state: Mapping[str, Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
        raise ScResidualError(
            f"{path} does not match the scGPT architecture from args.json: {'; '.join(parts)}; "
            "use the args.json/vocab.json/best_model.pt of one and the same scGPT model folder."
        )
    bad = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ScResidualError(
            f"{path} has {len(bad)} tensors whose shape disagrees with args.json/vocab.json "
            f"(checkpoint vs expected: {'; '.join(bad[:3])}); use the args.json and vocab.json "
            "shipped with this checkpoint."
        )
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- value processing
def _digitize(x: np.ndarray, bins: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Digitize as scGPT's ``_digitize(side="both")``: ties spread between equal bin edges."""
    left = np.digitize(x, bins)
    right = np.digitize(x, bins, right=True)
    return np.ceil(rng.random(len(x)) * (right - left) + left).astype(np.int64)


def bin_values(row: np.ndarray, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    """Per-cell quantile binning of scGPT (``scgpt.preprocess.binning``).

    Non-zero values get bins ``1 .. n_bins - 1`` by their quantile within the cell, zeros stay
    ``0``. Ties between equal quantile edges are broken at random as upstream, from ``rng``.
    """
    row = np.asarray(row, dtype=np.float64)
    out = np.zeros(len(row), dtype=np.float64)
    if row.size == 0 or row.max() <= 0:
        return out
    nz = row > 0
    edges = np.quantile(row[nz], np.linspace(0, 1, n_bins - 1))
    out[nz] = _digitize(row[nz], edges, rng)
    return out


# --------------------------------------------------------------------------- the source
@doc_params(doc_layer_counts=doc_layer_counts, doc_min_overlap=doc_min_overlap)
class ScGPTSource(FrozenSource):
    """A frozen scGPT model; embeddings are the L2-normalised ``<cls>`` outputs.

    Build it with :meth:`load`. The model is never trained: eval mode, no gradients.

    Parameters
    ----------
    model
        A loaded :class:`ScGPTModel`.
    vocab
        Token ids by gene symbol, special tokens included.
    args
        The checkpoint's ``args.json``.
    device
        Torch device.
    gene_col
        ``adata.var`` column with gene symbols; ``None`` uses ``var_names``.
    layer
        {doc_layer_counts}
    max_seq_len
        Tokens per cell including ``<cls>``; cells with more expressed genes are randomly
        subsampled as upstream (reproducibly, from ``seed``).
    min_overlap
        {doc_min_overlap}
    seed
        Seed for gene subsampling and for the random tie-breaking of the binning.

    """

    name = "scGPT"

    def __init__(
        self,
        model: ScGPTModel,
        vocab: Mapping[str, int],
        args: Mapping,
        *,
        device: str | torch.device = "cpu",
        gene_col: str | None = None,
        layer: str | None = None,
        max_seq_len: int | None = None,
        min_overlap: float = MIN_VOCAB_OVERLAP,
        seed: int = 0,
    ) -> None:
        self.device = _as_device(device)
        self.model = _freeze(model.to(self.device))
        self.vocab = dict(vocab)
        self.args = dict(args)
        self.gene_col = gene_col
        self.layer = layer
        self.min_overlap = min_overlap
        self.seed = seed
        self.pad_token = str(self.args.get("pad_token", PAD_TOKEN))
        if self.pad_token not in self.vocab:
            self.vocab[self.pad_token] = len(self.vocab)
        if CLS_TOKEN not in self.vocab:
            raise ScResidualError(
                f"the scGPT vocabulary has no {CLS_TOKEN!r} token; use the vocab.json shipped "
                "with the checkpoint."
            )
        self.pad_id = self.vocab[self.pad_token]
        self.cls_id = self.vocab[CLS_TOKEN]
        self.pad_value = float(self.args.get("pad_value", -2))
        self.n_bins = int(self.args.get("n_bins", 51))
        self.input_style = str(self.args.get("input_style", "binned"))
        if self.input_style not in ("binned", "log1p", "normed_raw"):
            raise ScResidualError(
                f"unknown input_style {self.input_style!r} in args.json; scGPT uses 'binned', "
                "'log1p' or 'normed_raw'."
            )
        seq = max_seq_len if max_seq_len is not None else self.args.get("max_seq_len")
        self.max_seq_len = int(seq) if seq else DEFAULT_MAX_SEQ_LEN
        if self.max_seq_len < 2:
            raise ScResidualError(f"max_seq_len must be at least 2, got {self.max_seq_len}.")

    # ------------------------------------------------------------------ construction
    @classmethod
    @doc_params(doc_layer_counts=doc_layer_counts, doc_min_overlap=doc_min_overlap)
    def load(
        cls,
        model_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        gene_col: str | None = None,
        layer: str | None = None,
        max_seq_len: int | None = None,
        min_overlap: float = MIN_VOCAB_OVERLAP,
        seed: int = 0,
    ) -> ScGPTSource:
        """Load an scGPT checkpoint folder (``args.json``, ``vocab.json``, ``best_model.pt``).

        Parameters
        ----------
        model_dir
            The folder, e.g. the downloaded ``scGPT_human``.
        device
            Torch device.
        gene_col
            ``adata.var`` column with gene symbols (scGPT's ``embed_data`` uses
            ``"feature_name"``); ``None`` uses ``var_names``.
        layer
            {doc_layer_counts}
        max_seq_len
            Tokens per cell including ``<cls>``; default ``args.json``'s ``max_seq_len``, else
            1200 as ``embed_data``.
        min_overlap
            {doc_min_overlap}
        seed
            Seed of the upstream-style random gene subsampling and bin tie-breaking.

        Returns
        -------
        The loaded, frozen source.

        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ScResidualError(
                f"scGPT model folder {model_dir} does not exist; pass the folder holding "
                f"{ARGS_FILE}, {VOCAB_FILE} and {MODEL_FILE}."
            )
        for fname in (ARGS_FILE, VOCAB_FILE, MODEL_FILE):
            if not (model_dir / fname).is_file():
                raise ScResidualError(
                    f"{model_dir} has no {fname}; an scGPT model folder needs {ARGS_FILE}, "
                    f"{VOCAB_FILE} and {MODEL_FILE} (download the complete folder)."
                )
        args = _read_json(model_dir / ARGS_FILE, "arguments (args.json)")
        vocab = _read_vocab(model_dir / VOCAB_FILE)
        state, ignored = normalise_state_dict(_read_state_dict(model_dir / MODEL_FILE))
        if ignored:
            logger.info("scGPT: ignoring %d task-head keys (%s...).", len(ignored), ignored[0])

        d_model = int(_config_value(args, "embsize", "d_model", required=True))
        nhead = int(_config_value(args, "nheads", "nhead", required=True))
        d_hid = int(_config_value(args, "d_hid", required=True))
        nlayers = int(_config_value(args, "nlayers", required=True))
        if d_model % nhead:
            raise ScResidualError(
                f"args.json: embsize={d_model} is not divisible by nheads={nhead}; use the "
                "args.json shipped with the checkpoint."
            )
        style = str(args.get("input_emb_style", "continuous"))
        n_input_bins = None
        if style == "category":
            emb = state.get("value_encoder.embedding.weight")
            n_input_bins = int(emb.shape[0]) if emb is not None else int(args["n_bins"]) + 2
        model = ScGPTModel(
            len(vocab),
            d_model,
            nhead,
            d_hid,
            nlayers,
            input_emb_style=style,
            n_input_bins=n_input_bins,
            pad_value=float(args.get("pad_value", -2)),
            norm_scheme="pre" if args.get("pre_norm", False) else "post",
            heads=_head_spec(state, d_model),
        )
        _load_strict(model, state, model_dir / MODEL_FILE)
        logger.info(
            "scGPT: loaded %s (%d layers, d_model=%d, vocabulary %d).",
            model_dir,
            nlayers,
            d_model,
            len(vocab),
        )
        return cls(
            model,
            vocab,
            args,
            device=device,
            gene_col=gene_col,
            layer=layer,
            max_seq_len=max_seq_len,
            min_overlap=min_overlap,
            seed=seed,
        )

    # ------------------------------------------------------------------ embedding
    @property
    def n_latent(self) -> int:
        """Width of the embedding (``embsize``)."""
        return self.model.d_model

    def _values(self, row: np.ndarray, total: float, rng: np.random.Generator) -> np.ndarray:
        if self.input_style == "binned":
            return bin_values(row, self.n_bins, rng)
        return log1p_normalise(row[None], totals=[total], log=self.input_style == "log1p")[0]

    def tokenize(
        self, adata: AnnData, *, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, values and key-padding mask for every cell, as scGPT feeds its model.

        Each row is ``<cls>`` (value ``pad_value``) followed by the cell's non-zero vocabulary
        genes in ``adata`` order with their processed values (binned for ``input_style ==
        "binned"``), randomly subsampled to ``max_seq_len - 1`` genes when longer, then padded
        with ``<pad>`` / ``pad_value`` to the longest row.

        Returns
        -------
        ``genes`` (int64), ``values`` (float32) and ``pad_mask`` (bool, ``True`` at padding),
        each ``(n_obs, seq_len)``.

        """
        X, tokens = self._aligned(adata)
        rng = np.random.default_rng(self.seed) if rng is None else rng
        return self._tokenize_rows(X, tokens, rng, np.asarray(self._totals(adata)))

    def _aligned(self, adata: AnnData):
        X = _matrix(adata, self.layer)
        genes = _gene_ids(adata, self.gene_col, what="gene symbols")
        return _match_genes(
            X,
            genes,
            self.vocab,
            min_overlap=self.min_overlap,
            model_name=self.name,
            what="gene symbols",
        )

    def _totals(self, adata: AnnData) -> np.ndarray:
        if self.input_style == "binned":  # binning is scale-free; totals unused
            return np.zeros(adata.n_obs, dtype=np.float64)
        return np.asarray(_matrix(adata, self.layer).sum(axis=1), dtype=np.float64).ravel()

    def _tokenize_rows(self, X, tokens, rng, totals):
        rows_g, rows_v = [], []
        for i in range(X.shape[0]):
            start, stop = X.indptr[i], X.indptr[i + 1]
            idx, vals = X.indices[start:stop], X.data[start:stop]
            keep = vals != 0
            idx, vals = idx[keep], vals[keep]
            order = np.argsort(idx, kind="stable")  # adata gene order
            idx, vals = idx[order], vals[order]
            values = self._values(vals, float(totals[i]), rng)
            if len(idx) > self.max_seq_len - 1:  # upstream: random sample, keep <cls>
                pick = rng.permutation(len(idx))[: self.max_seq_len - 1]
                idx, values = idx[pick], values[pick]
            rows_g.append(np.concatenate([[self.cls_id], tokens[idx]]))
            rows_v.append(np.concatenate([[self.pad_value], values]))
        length = max((len(r) for r in rows_g), default=1)
        genes = np.full((len(rows_g), length), self.pad_id, dtype=np.int64)
        values = np.full((len(rows_g), length), self.pad_value, dtype=np.float32)
        for i, (g, v) in enumerate(zip(rows_g, rows_v, strict=True)):
            genes[i, : len(g)] = g
            values[i, : len(v)] = v
        return genes, values, genes == self.pad_id

    def embed(
        self, adata: AnnData, *, batch_size: int = 64, progress: bool | None = None
    ) -> np.ndarray:
        """Embed every cell; returns L2-normalised float32 ``(n_obs, embsize)``.

        As ``scgpt.tasks.get_batch_cell_embeddings``: the transformer output at ``<cls>``,
        divided by its L2 norm.
        """
        X, tokens = self._aligned(adata)
        totals = self._totals(adata)
        rng = np.random.default_rng(self.seed)
        Z = np.zeros((adata.n_obs, self.n_latent), dtype=np.float32)
        with torch.no_grad():
            for rows in _batches(adata.n_obs, batch_size, progress=progress, desc=self.name):
                genes, values, pad = self._tokenize_rows(X[rows], tokens, rng, totals[rows])
                out = self.model(
                    torch.from_numpy(genes).to(self.device),
                    torch.from_numpy(values).to(self.device),
                    torch.from_numpy(pad).to(self.device),
                )
                Z[rows] = out[:, 0, :].float().cpu().numpy()
        norm = np.linalg.norm(Z, axis=1, keepdims=True)
        return Z / np.maximum(norm, np.finfo(np.float32).tiny)
