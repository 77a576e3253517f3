"""Frozen Geneformer: a Hugging Face BERT folder plus Geneformer's pickled gene dictionaries.

Geneformer models are saved with ``save_pretrained`` (``config.json`` and ``model.safetensors``
or ``pytorch_model.bin``, usually ``BertForMaskedLM``). Cells are tokenised as Geneformer's
``TranscriptomeTokenizer`` does (rank-value encoding) and embedded as its ``EmbExtractor`` with
``emb_mode="cell"`` (mean of the gene-token hidden states of one layer).

``transformers`` is an optional dependency: ``pip install scresidual[geneformer]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from anndata import AnnData

from .._docs import doc_layer_counts, doc_min_overlap, doc_params
from .._errors import ScResidualError, first_line
from .._genes import MIN_VOCAB_OVERLAP
from .._normalise import TARGET_SUM
from ._base import FrozenSource
from ._torch import _as_device, _batches, _freeze, _gene_ids, _match_genes, _matrix

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PAD_TOKEN = "<pad>"
CLS_TOKEN = "<cls>"
EOS_TOKEN = "<eos>"
ENSEMBL_COLUMNS = ("gene_ids", "ensembl_id", "gene_id")
"""``adata.var`` columns searched (in order) for Ensembl ids when ``gene_col`` is not given."""

_ARCHITECTURES = (
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
)


def _import_transformers():
    try:
        import transformers
    except ImportError as err:
        raise ScResidualError(
            "Geneformer needs the optional package transformers; pip install scresidual[geneformer]"
        ) from err
    return transformers


def _read_pickle_dict(path: Path, what: str) -> dict:
    """A pickled dictionary of plain values; pickles holding any other object are refused."""
    from .._safe_load import read_plain_pickle

    if not path.is_file():
        raise ScResidualError(
            f"Geneformer {what} {path} does not exist; pass the .pkl file shipped with the model."
        )
    data = read_plain_pickle(
        path, what=f"Geneformer {what}", fix="pass the .pkl file shipped with the model"
    )
    if not isinstance(data, Mapping) or not data:
        raise ScResidualError(
            f"the Geneformer {what} {path} is not a non-empty dictionary; pass the right .pkl file."
        )
    return dict(data)


def _find_dictionary(model_dir: Path, pattern: str, what: str, argument: str) -> Path:
    """The single ``pattern`` file in the model folder (never a folder around it)."""
    found = sorted(p for p in model_dir.glob(pattern) if p.is_file())
    if len(found) != 1:
        where = "found none" if not found else f"found {len(found)}: {', '.join(map(str, found))}"
        raise ScResidualError(
            f"cannot choose the Geneformer {what} in {model_dir} ({where}); pass {argument}= the "
            ".pkl file matching the model (e.g. token_dictionary_gc104M.pkl for the 4096-input "
            "V2 models)."
        )
    return found[0]


@doc_params(doc_layer_counts=doc_layer_counts, doc_min_overlap=doc_min_overlap)
class GeneformerSource(FrozenSource):
    """A frozen Geneformer model; embeddings are mean gene-token hidden states of one layer.

    Build it with :meth:`load`. The model is never trained: eval mode, no gradients.

    Parameters
    ----------
    model
        A ``transformers`` BERT model (any head; its ``base_model`` is used).
    token_dictionary
        Ensembl id -> token id, with ``<pad>`` (and ``<mask>``; ``<cls>``/``<eos>`` for V2).
    gene_median_dictionary
        Ensembl id -> non-zero median expression across the pretraining corpus.
    emb_layer
        Which hidden state to pool, relative to the last layer as Geneformer's ``EmbExtractor``:
        ``0`` is the last layer, ``-1`` (Geneformer's default) the penultimate one, down to
        ``-num_hidden_layers`` (the embedding layer output).
    device
        Torch device.
    gene_col
        ``adata.var`` column with Ensembl ids; default the first of ``gene_ids``, ``ensembl_id``,
        ``gene_id`` present, else ``var_names``.
    layer
        {doc_layer_counts}
    model_input_size
        Maximum tokens per cell including special tokens; default the model's
        ``max_position_embeddings`` (2048 for V1, 4096 for V2 models).
    min_overlap
        {doc_min_overlap}

    """

    name = "Geneformer"

    def __init__(
        self,
        model: torch.nn.Module,
        token_dictionary: Mapping[str, int],
        gene_median_dictionary: Mapping[str, float],
        *,
        emb_layer: int = -1,
        device: str | torch.device = "cpu",
        gene_col: str | None = None,
        layer: str | None = None,
        model_input_size: int | None = None,
        min_overlap: float = MIN_VOCAB_OVERLAP,
    ) -> None:
        self.device = _as_device(device)
        self.model = _freeze(model.to(self.device))
        config = self.model.config
        self.n_layers = int(config.num_hidden_layers)
        if not -self.n_layers <= int(emb_layer) <= 0:
            raise ScResidualError(
                f"emb_layer={emb_layer} is out of range for a {self.n_layers}-layer model; use "
                f"0 (last layer), -1 (penultimate, Geneformer's default) ... {-self.n_layers}."
            )
        self.emb_layer = int(emb_layer)
        self.token_dictionary = dict(token_dictionary)
        if PAD_TOKEN not in self.token_dictionary:
            raise ScResidualError(
                "the Geneformer token dictionary has no '<pad>' token; pass the "
                "token_dictionary .pkl shipped with the model."
            )
        self.pad_id = int(self.token_dictionary[PAD_TOKEN])
        self.special_token = (
            CLS_TOKEN in self.token_dictionary and EOS_TOKEN in self.token_dictionary
        )
        size = model_input_size or int(config.max_position_embeddings)
        self.model_input_size = int(size)
        if self.model_input_size < (3 if self.special_token else 1):
            raise ScResidualError(f"model_input_size={size} is too small; use the model's size.")
        # Tokenised genes: those with both a median and a token (the tokenizer's gene list).
        medians: dict[str, float] = {}
        for gene, med in gene_median_dictionary.items():
            if gene in self.token_dictionary and not str(gene).startswith("<"):
                medians[str(gene)] = float(med)
        if not medians:
            raise ScResidualError(
                "the Geneformer token and gene-median dictionaries share no gene; pass the "
                "matching pair of .pkl files."
            )
        bad = [g for g, m in medians.items() if not np.isfinite(m) or m <= 0]
        if bad:
            raise ScResidualError(
                f"gene_median_dictionary has {len(bad)} non-positive medians (e.g. {bad[0]}); "
                "pass the gene_median_dictionary .pkl shipped with the model."
            )
        self.gene_medians = medians
        self._gene_vocab = {g: int(self.token_dictionary[g]) for g in medians}
        self._median_by_token = {self._gene_vocab[g]: m for g, m in medians.items()}
        self.gene_col = gene_col
        self.layer = layer
        self.min_overlap = min_overlap

    # ------------------------------------------------------------------ construction
    @classmethod
    @doc_params(doc_layer_counts=doc_layer_counts, doc_min_overlap=doc_min_overlap)
    def load(
        cls,
        model_dir: str | Path,
        *,
        token_dictionary: str | Path | Mapping | None = None,
        gene_median_dictionary: str | Path | Mapping | None = None,
        emb_layer: int = -1,
        device: str | torch.device = "cpu",
        gene_col: str | None = None,
        layer: str | None = None,
        model_input_size: int | None = None,
        min_overlap: float = MIN_VOCAB_OVERLAP,
    ) -> GeneformerSource:
        """Load a Geneformer model folder and its gene dictionaries.

        Parameters
        ----------
        model_dir
            Folder written by ``save_pretrained`` (``config.json`` and ``model.safetensors`` or
            ``pytorch_model.bin``), e.g. ``Geneformer/gf-12L-95M-i4096``.
        token_dictionary
            Path to (or the loaded) pickled token dictionary (``token_dictionary_gc104M.pkl``
            for V2 models, ``token_dictionary_gc30M.pkl`` for V1). Default: the single
            ``token_dictionary*.pkl`` in ``model_dir`` (folders around it are not searched).
            Pickles are read as plain data: one holding any other object is refused.
        gene_median_dictionary
            Path to (or the loaded) pickled gene median dictionary; found like
            ``token_dictionary`` (``gene_median_dictionary*.pkl``) when not given.
        emb_layer
            Hidden state to pool relative to the last layer: ``-1`` (default, as Geneformer)
            is the penultimate layer, ``0`` the last.
        device
            Torch device.
        gene_col
            ``adata.var`` column with Ensembl ids (see :class:`GeneformerSource`).
        layer
            {doc_layer_counts}
        model_input_size
            Tokens per cell; default the model's ``max_position_embeddings``.
        min_overlap
            {doc_min_overlap}

        Returns
        -------
        The loaded, frozen source.

        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ScResidualError(
                f"Geneformer model folder {model_dir} does not exist; pass the folder holding "
                f"{CONFIG_FILE} and {WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]})."
            )
        if not (model_dir / CONFIG_FILE).is_file():
            raise ScResidualError(
                f"{model_dir} has no {CONFIG_FILE}; pass a folder written by save_pretrained "
                "(download the complete Geneformer model folder)."
            )
        if not any((model_dir / f).is_file() for f in WEIGHT_FILES):
            raise ScResidualError(
                f"{model_dir} has neither {WEIGHT_FILES[0]} nor {WEIGHT_FILES[1]}; download the "
                "model weights into the folder."
            )
        tokens = cls._dictionary(
            token_dictionary,
            model_dir,
            "token_dictionary*.pkl",
            "token dictionary",
            "token_dictionary",
        )
        medians = cls._dictionary(
            gene_median_dictionary,
            model_dir,
            "gene_median_dictionary*.pkl",
            "gene median dictionary",
            "gene_median_dictionary",
        )
        model = _load_bert(model_dir)
        vocab_size = int(model.config.vocab_size)
        too_big = [k for k, v in tokens.items() if not 0 <= int(v) < vocab_size]
        if too_big:
            raise ScResidualError(
                f"the token dictionary has ids outside the model vocabulary of {vocab_size} "
                f"(e.g. {too_big[0]}={tokens[too_big[0]]}); pass the dictionary matching the "
                "model (V1 and V2 Geneformer dictionaries differ)."
            )
        return cls(
            model,
            tokens,
            medians,
            emb_layer=emb_layer,
            device=device,
            gene_col=gene_col,
            layer=layer,
            model_input_size=model_input_size,
            min_overlap=min_overlap,
        )

    @staticmethod
    def _dictionary(value, model_dir: Path, pattern: str, what: str, argument: str) -> dict:
        if isinstance(value, Mapping):
            return dict(value)
        path = (
            Path(value)
            if value is not None
            else _find_dictionary(model_dir, pattern, what, argument)
        )
        return _read_pickle_dict(path, what)

    # ------------------------------------------------------------------ tokenisation
    @property
    def n_latent(self) -> int:
        """Width of the embedding (``hidden_size``)."""
        return int(self.model.config.hidden_size)

    def _gene_column(self, adata: AnnData) -> str | None:
        if self.gene_col is not None:
            return self.gene_col
        return next((c for c in ENSEMBL_COLUMNS if c in adata.var.columns), None)

    def _aligned(self, adata: AnnData):
        X_all = _matrix(adata, self.layer)
        genes = _gene_ids(adata, self._gene_column(adata), what="Ensembl gene ids")
        X, tokens = _match_genes(
            X_all,
            genes,
            self._gene_vocab,
            min_overlap=self.min_overlap,
            model_name=self.name,
            what="Ensembl gene ids",
        )
        if "n_counts" in adata.obs.columns:  # Geneformer reads obs["n_counts"]
            totals = np.asarray(adata.obs["n_counts"], dtype=np.float64)
        else:  # total counts over all genes of the cell
            totals = np.asarray(X_all.sum(axis=1), dtype=np.float64).ravel()
        return X, tokens, totals

    def _tokenize_rows(self, X, tokens: np.ndarray, totals: np.ndarray) -> list[np.ndarray]:
        medians = np.array([self._median_by_token[t] for t in tokens], dtype=np.float64)
        n_genes = self.model_input_size - (2 if self.special_token else 0)
        cls_id = self.token_dictionary.get(CLS_TOKEN)
        eos_id = self.token_dictionary.get(EOS_TOKEN)
        out: list[np.ndarray] = []
        empty = 0
        for i in range(X.shape[0]):
            start, stop = X.indptr[i], X.indptr[i + 1]
            idx, vals = X.indices[start:stop], X.data[start:stop].astype(np.float64)
            keep = vals != 0
            idx, vals = idx[keep], vals[keep]
            order = np.argsort(idx, kind="stable")
            idx, vals = idx[order], vals[order]
            total = totals[i]
            norm = vals / total * TARGET_SUM / medians[idx] if total > 0 else vals / medians[idx]
            ranked = tokens[idx[np.argsort(-norm, kind="stable")]][:n_genes]
            empty += len(ranked) == 0
            if self.special_token:
                ranked = np.concatenate([[cls_id], ranked, [eos_id]])
            out.append(ranked.astype(np.int64))
        if empty:
            raise ScResidualError(
                f"{empty} cells express none of the Geneformer genes and cannot be embedded; "
                "remove them first (e.g. sc.pp.filter_cells(adata, min_genes=1) on model genes)."
            )
        return out

    def tokenize(self, adata: AnnData) -> list[np.ndarray]:
        """Rank-value encode every cell as Geneformer's ``TranscriptomeTokenizer``.

        Per cell: counts / total counts x 10,000 / gene median, non-zero genes ranked by that
        value descending (ties keep ``adata`` gene order), truncated to ``model_input_size``
        (minus 2 with special tokens), with ``<cls>`` prepended and ``<eos>`` appended when
        the token dictionary has them (V2). Totals are ``adata.obs["n_counts"]`` when present,
        else each cell's sum over all its genes, as the tokenizer expects raw counts.

        Returns
        -------
        One int64 array of token ids per cell.

        """
        X, tokens, totals = self._aligned(adata)
        return self._tokenize_rows(X, tokens, totals)

    def _pad(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        length = max(len(r) for r in rows)
        ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), length), dtype=np.int64)
        pool = np.zeros((len(rows), length), dtype=np.float32)
        skip = 1 if self.special_token else 0
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            attention[i, : len(r)] = 1
            pool[i, skip : len(r) - skip] = 1.0  # gene tokens only, as EmbExtractor "cell"
        return torch.from_numpy(ids), torch.from_numpy(attention), torch.from_numpy(pool)

    # ------------------------------------------------------------------ embedding
    def embed(
        self, adata: AnnData, *, batch_size: int = 64, progress: bool | None = None
    ) -> np.ndarray:
        """Embed every cell; returns float32 ``(n_obs, hidden_size)``.

        As Geneformer's ``EmbExtractor(emb_mode="cell")``: the hidden states of layer
        ``num_hidden_layers + emb_layer`` averaged over the cell's gene tokens (padding and
        ``<cls>``/``<eos>`` excluded).
        """
        X, tokens, totals = self._aligned(adata)
        Z = np.zeros((adata.n_obs, self.n_latent), dtype=np.float32)
        body = getattr(self.model, "base_model", self.model)
        layer_idx = self.n_layers + self.emb_layer
        with torch.no_grad():
            for rows in _batches(adata.n_obs, batch_size, progress=progress, desc=self.name):
                ids, attention, pool = self._pad(self._tokenize_rows(X[rows], tokens, totals[rows]))
                out = body(
                    input_ids=ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    output_hidden_states=True,
                )
                hidden = out.hidden_states[layer_idx].float()
                pool = pool.to(self.device).unsqueeze(-1)
                Z[rows] = ((hidden * pool).sum(1) / pool.sum(1)).cpu().numpy()
        return Z


def _load_bert(model_dir: Path) -> torch.nn.Module:
    """Load the BERT model of ``model_dir`` with its saved head; every weight must be present."""
    transformers = _import_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for bad configs
        raise ScResidualError(
            f"cannot read {model_dir / CONFIG_FILE} ({type(err).__name__}); re-download the "
            "Geneformer model folder."
        ) from err
    if getattr(config, "model_type", None) != "bert":
        raise ScResidualError(
            f"{model_dir} holds a {getattr(config, 'model_type', '?')!r} model, not a BERT "
            "(Geneformer) model; pass a Geneformer model folder."
        )
    arch = next((a for a in (config.architectures or []) if a in _ARCHITECTURES), "BertModel")
    model_cls = getattr(transformers, arch)
    try:
        model, info = model_cls.from_pretrained(
            model_dir, local_files_only=True, output_loading_info=True
        )
    except Exception as err:  # noqa: BLE001 - corrupted weights, size mismatches, ...
        raise ScResidualError(
            f"cannot load the Geneformer weights in {model_dir} ({type(err).__name__}: "
            f"{first_line(err, 160)}); re-download the model "
            "folder."
        ) from err
    missing = sorted(info.get("missing_keys", []))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", []))
    if missing or mismatched:
        keys = (missing + mismatched)[:3]
        raise ScResidualError(
            f"the weights in {model_dir} do not fit its config.json ({len(missing)} missing, "
            f"{len(mismatched)} mis-shaped, e.g. {', '.join(keys)}); re-download the complete "
            "model folder."
        )
    unexpected = sorted(info.get("unexpected_keys", []))
    if unexpected:
        logger.info(
            "Geneformer: %d checkpoint keys unused by %s (%s...).",
            len(unexpected),
            arch,
            unexpected[0],
        )
    return model
