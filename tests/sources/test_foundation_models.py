"""Frozen foundation-model sources: scGPT, Geneformer, generic torch models, precomputed obsm.

All checkpoints are tiny, randomly initialised and written in the real on-disk layouts.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

try:
    import transformers
except ImportError:  # optional extra
    transformers = None

from scresidual import ScResidualError
from scresidual.sources import (
    GeneformerSource,
    ObsmSource,
    ScGPTModel,
    ScGPTSource,
    TorchSource,
    embed,
)
from scresidual.sources._scgpt import bin_values  # white-box: scGPT's value binning

N_CELLS = 1000
D_MODEL, N_HEAD, D_HID, N_LAYERS = 16, 2, 32, 2


def _counts(n_cells, n_genes, seed=0, density=0.4):
    rng = np.random.default_rng(seed)
    X = rng.poisson(3.0, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    X[:, 0] += 1  # every cell expresses at least one model gene
    return sp.csr_matrix(X.astype(np.float32))


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_unchanged(before, module):
    after = module.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert not any(p.requires_grad for p in module.parameters())
    assert not module.training


# =========================================================================== scGPT
SCGPT_GENES = [f"GENE{i}" for i in range(40)]


def _scgpt_vocab():
    vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2}
    vocab.update({g: i + 3 for i, g in enumerate(SCGPT_GENES)})
    return vocab


def _scgpt_args(**extra):
    # field names as in the args.json of the published scGPT_human folder
    args = {
        "embsize": D_MODEL,
        "nheads": N_HEAD,
        "d_hid": D_HID,
        "nlayers": N_LAYERS,
        "n_layers_cls": 3,
        "dropout": 0.2,
        "pad_token": "<pad>",
        "pad_value": -2,
        "mask_value": -1,
        "n_bins": 51,
        "input_style": "binned",
        "input_emb_style": "continuous",
        "max_seq_len": 1200,
        "fast_transformer": True,
        "MVC": True,
        "USE_GENERATIVE_TRAINING": True,
        "training_tasks": "both",
    }
    args.update(extra)
    return args


def upstream_scgpt_keys(n_layers, *, flash):
    """Key names of a published scGPT TransformerModel state dict, written out by hand."""
    keys = [
        "encoder.embedding.weight",
        "encoder.enc_norm.weight",
        "encoder.enc_norm.bias",
        "flag_encoder.weight",
        "value_encoder.linear1.weight",
        "value_encoder.linear1.bias",
        "value_encoder.linear2.weight",
        "value_encoder.linear2.bias",
        "value_encoder.norm.weight",
        "value_encoder.norm.bias",
        "decoder.fc.0.weight",
        "decoder.fc.0.bias",
        "decoder.fc.2.weight",
        "decoder.fc.2.bias",
        "decoder.fc.4.weight",
        "decoder.fc.4.bias",
        "mvc_decoder.gene2query.weight",
        "mvc_decoder.gene2query.bias",
        "mvc_decoder.W.weight",
    ]
    attn = (
        ["self_attn.Wqkv.weight", "self_attn.Wqkv.bias"]
        if flash
        else ["self_attn.in_proj_weight", "self_attn.in_proj_bias"]
    )
    block = attn + [
        "self_attn.out_proj.weight",
        "self_attn.out_proj.bias",
        "linear1.weight",
        "linear1.bias",
        "linear2.weight",
        "linear2.bias",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
    ]
    for i in range(n_layers):
        keys += [f"transformer_encoder.layers.{i}.{k}" for k in block]
    return keys


def _mvc_heads():
    return {
        "mvc": {"style": "inner product", "d_in": D_MODEL, "zero_prob": False, "d_query": D_MODEL}
    }


def _random_scgpt_state(seed=0, flash=True):
    torch.manual_seed(seed)
    model = ScGPTModel(len(_scgpt_vocab()), D_MODEL, N_HEAD, D_HID, N_LAYERS, heads=_mvc_heads())
    for p in model.parameters():  # LayerNorm weights etc. away from their init
        torch.nn.init.normal_(p, std=0.3)
    state = model.state_dict()
    if flash:  # the flash-attention layout of the published checkpoint
        state = {
            k.replace("self_attn.in_proj_weight", "self_attn.Wqkv.weight").replace(
                "self_attn.in_proj_bias", "self_attn.Wqkv.bias"
            ): v
            for k, v in state.items()
        }
    return state


def write_scgpt(path, *, flash=True, state=None, args=None, vocab=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "args.json").write_text(json.dumps(args or _scgpt_args()))
    (path / "vocab.json").write_text(json.dumps(vocab or _scgpt_vocab()))
    torch.save(
        state if state is not None else _random_scgpt_state(flash=flash), path / "best_model.pt"
    )
    return path


@pytest.fixture(scope="module")
def scgpt_dir(tmp_path_factory):
    return write_scgpt(tmp_path_factory.mktemp("scGPT_human"))


@pytest.fixture(scope="module")
def scgpt_adata():
    genes = SCGPT_GENES[:30] + [f"NOTINVOCAB{i}" for i in range(10)]
    adata = ad.AnnData(_counts(N_CELLS, len(genes)), var=pd.DataFrame(index=genes))
    adata.var["feature_name"] = adata.var_names.to_numpy()
    return adata


def test_scgpt_state_dict_names_match_upstream():
    state = _random_scgpt_state(flash=True)
    assert set(state) == set(upstream_scgpt_keys(N_LAYERS, flash=True))
    state = _random_scgpt_state(flash=False)
    assert set(state) == set(upstream_scgpt_keys(N_LAYERS, flash=False))


def test_scgpt_load_and_embed(scgpt_dir, scgpt_adata, caplog):
    with caplog.at_level(logging.INFO, logger="scresidual"):
        src = ScGPTSource.load(scgpt_dir)
    assert src.n_latent == D_MODEL
    before = _params(src.model)
    with caplog.at_level(logging.INFO, logger="scresidual"):
        Z = src.embed(scgpt_adata, batch_size=128, progress=False)
    assert "30 of 40 query genes" in caplog.text
    assert Z.shape == (N_CELLS, D_MODEL) and Z.dtype == np.float32
    assert np.isfinite(Z).all()
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-5)
    assert Z.std(axis=0).mean() > 1e-3  # cells are not all embedded alike
    again = src.embed(scgpt_adata[:200], batch_size=70, progress=False)  # batching-invariant
    np.testing.assert_allclose(again, Z[:200], atol=1e-6)
    _assert_unchanged(before, src.model)


def test_scgpt_flash_and_torch_layouts_give_same_embedding(tmp_path, scgpt_adata):
    a = ScGPTSource.load(write_scgpt(tmp_path / "a", state=_random_scgpt_state(1, flash=True)))
    b = ScGPTSource.load(write_scgpt(tmp_path / "b", state=_random_scgpt_state(1, flash=False)))
    sub = scgpt_adata[:50]
    np.testing.assert_allclose(
        a.embed(sub, progress=False), b.embed(sub, progress=False), atol=1e-6
    )


def test_scgpt_encoder_matches_torch_transformer_encoder(scgpt_dir, scgpt_adata):
    """Post-norm blocks equal torch's TransformerEncoder, upstream's non-flash path."""
    src = ScGPTSource.load(scgpt_dir)
    ref = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(D_MODEL, N_HEAD, D_HID, 0.0, batch_first=True),
        N_LAYERS,
        enable_nested_tensor=False,
    )
    prefix = "transformer_encoder."
    ref.load_state_dict(
        {k[len(prefix) :]: v for k, v in src.model.state_dict().items() if k.startswith(prefix)}
    )
    ref.eval()
    genes, values, pad = src.tokenize(scgpt_adata[:20])
    g, v, m = torch.from_numpy(genes), torch.from_numpy(values), torch.from_numpy(pad)
    with torch.no_grad():
        x = src.model.encoder(g) + src.model.value_encoder(v)
        expected = ref(x, src_key_padding_mask=m)[:, 0]
        got = src.model(g, v, m)[:, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_scgpt_tokenize_layout(scgpt_dir):
    src = ScGPTSource.load(scgpt_dir)
    X = np.array([[0, 5, 1, 3, 7], [0, 0, 0, 0, 2], [0, 0, 0, 0, 0]], dtype=np.float32)
    adata = ad.AnnData(X, var=pd.DataFrame(index=["GENE0", "GENE1", "GENE2", "GENE3", "FOO"]))
    genes, values, pad = src.tokenize(adata)
    vocab = _scgpt_vocab()
    assert genes.shape == (3, 4)  # <cls> + 3 expressed vocabulary genes, padded
    assert genes[0].tolist() == [vocab["<cls>"], vocab["GENE1"], vocab["GENE2"], vocab["GENE3"]]
    assert genes[1].tolist() == [vocab["<cls>"]] + [vocab["<pad>"]] * 3  # FOO not in vocab
    assert pad.tolist() == [[False] * 4, [False] + [True] * 3, [False] + [True] * 3]
    assert values[0, 0] == -2 and (values[1:, 1:] == -2).all()
    # per-cell quantile bins 1..50: the largest value gets the top bin, order preserved
    assert values[0, 1] == 50 and values[0, 2] == 1 and 1 < values[0, 3] < 50
    # all-zero cells still embed from <cls> alone
    Z = src.embed(adata, progress=False)
    assert np.isfinite(Z).all()


def test_scgpt_bin_values():
    rng = np.random.default_rng(0)
    row = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 0.0])
    binned = bin_values(row, 51, rng)
    assert binned[0] == 0 and binned[5] == 0
    assert binned[1] == 1 and binned[4] == 50
    assert np.all(np.diff(binned[1:5]) > 0)
    assert bin_values(np.zeros(3), 51, rng).tolist() == [0, 0, 0]


def test_scgpt_max_seq_len_subsamples(scgpt_dir, scgpt_adata):
    src = ScGPTSource.load(scgpt_dir, max_seq_len=8)
    genes, _, pad = src.tokenize(scgpt_adata[:30])
    assert genes.shape[1] == 8 and (genes[:, 0] == _scgpt_vocab()["<cls>"]).all()
    assert (~pad).sum(axis=1).max() == 8
    Z = src.embed(scgpt_adata[:30], progress=False)
    assert Z.shape == (30, D_MODEL)


def test_scgpt_gene_col_and_embed_writes_obsm(scgpt_dir, scgpt_adata):
    adata = scgpt_adata[:40].copy()
    adata.var_names = [f"id{i}" for i in range(adata.n_vars)]
    with pytest.raises(ScResidualError, match="vocabulary"):
        ScGPTSource.load(scgpt_dir).embed(adata, progress=False)
    src = ScGPTSource.load(scgpt_dir, gene_col="feature_name")
    embed(adata, src, key_added="X_scGPT", batch_size=16, progress=False)
    assert adata.obsm["X_scGPT"].shape == (40, D_MODEL)


def test_scgpt_wrong_key_raises(tmp_path):
    state = _random_scgpt_state()
    state["encoder.embeding.weight"] = state.pop("encoder.embedding.weight")
    model_dir = write_scgpt(tmp_path / "m", state=state)
    with pytest.raises(ScResidualError, match="encoder.embedding.weight") as err:
        ScGPTSource.load(model_dir)
    assert "\n" not in str(err.value) and "unexpected" in str(err.value)


def test_scgpt_shape_mismatch_raises(tmp_path):
    vocab = _scgpt_vocab()
    vocab["EXTRA"] = len(vocab)
    model_dir = write_scgpt(tmp_path / "m", vocab=vocab)
    with pytest.raises(ScResidualError, match="shape"):
        ScGPTSource.load(model_dir)


def test_scgpt_task_heads_are_ignored(tmp_path, scgpt_adata):
    state = _random_scgpt_state()
    state["cls_decoder.out_layer.weight"] = torch.zeros(7, D_MODEL)
    state["cls_decoder.out_layer.bias"] = torch.zeros(7)
    src = ScGPTSource.load(write_scgpt(tmp_path / "m", state=state))
    assert src.embed(scgpt_adata[:5], progress=False).shape == (5, D_MODEL)


@pytest.mark.parametrize("missing", ["args.json", "vocab.json", "best_model.pt"])
def test_scgpt_missing_file_raises(tmp_path, missing):
    model_dir = write_scgpt(tmp_path / "m")
    (model_dir / missing).unlink()
    with pytest.raises(ScResidualError, match=missing):
        ScGPTSource.load(model_dir)


def test_scgpt_bad_files_raise(tmp_path):
    with pytest.raises(ScResidualError, match="does not exist"):
        ScGPTSource.load(tmp_path / "nowhere")
    model_dir = write_scgpt(tmp_path / "m")
    (model_dir / "best_model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ScResidualError, match="corrupted"):
        ScGPTSource.load(model_dir)
    model_dir = write_scgpt(tmp_path / "n")
    args = _scgpt_args()
    del args["embsize"]
    (model_dir / "args.json").write_text(json.dumps(args))
    with pytest.raises(ScResidualError, match="embsize"):
        ScGPTSource.load(model_dir)
    (model_dir / "args.json").write_text("{broken")
    with pytest.raises(ScResidualError, match="args.json"):
        ScGPTSource.load(model_dir)


def test_scgpt_no_gene_overlap_raises(scgpt_dir):
    adata = ad.AnnData(_counts(10, 5), var=pd.DataFrame(index=[f"X{i}" for i in range(5)]))
    with pytest.raises(ScResidualError, match="0 of 5 genes"):
        ScGPTSource.load(scgpt_dir).embed(adata, progress=False)


# =========================================================================== Geneformer
needs_transformers = pytest.mark.skipif(transformers is None, reason="transformers not installed")

GF_GENES = [f"ENSG{i:011d}" for i in range(1, 31)]


def _gf_tokens(v2=True):
    tokens = {"<pad>": 0, "<mask>": 1}
    if v2:
        tokens.update({"<cls>": 2, "<eos>": 3})
    start = len(tokens)
    tokens.update({g: start + i for i, g in enumerate(GF_GENES)})
    return tokens


def _gf_medians():
    rng = np.random.default_rng(1)
    medians = rng.uniform(0.5, 4.0, len(GF_GENES))
    return {g: float(m) for g, m in zip(GF_GENES, medians, strict=True)}


def write_geneformer(path, *, v2=True, max_pos=64, seed=0):
    path.mkdir(parents=True, exist_ok=True)
    tokens = _gf_tokens(v2)
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(tokens),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=max_pos,
        pad_token_id=0,
    )
    transformers.BertForMaskedLM(config).save_pretrained(path)
    suffix = "gc104M" if v2 else "gc30M"
    with open(path / f"token_dictionary_{suffix}.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(path / f"gene_median_dictionary_{suffix}.pkl", "wb") as f:
        pickle.dump(_gf_medians(), f)
    return path


@pytest.fixture(scope="module")
def gf_dir(tmp_path_factory):
    return write_geneformer(tmp_path_factory.mktemp("gf-2L-i64"))


def _gf_adata(n_cells=N_CELLS):
    genes = GF_GENES[:25] + [f"ENSG9{i:010d}" for i in range(5)]
    adata = ad.AnnData(_counts(n_cells, len(genes), seed=3), var=pd.DataFrame(index=genes))
    return adata


@needs_transformers
def test_geneformer_load_and_embed(gf_dir):
    src = GeneformerSource.load(gf_dir)
    assert src.special_token and src.model_input_size == 64 and src.n_latent == 16
    before = _params(src.model)
    adata = _gf_adata()
    Z = src.embed(adata, batch_size=128, progress=False)
    assert Z.shape == (N_CELLS, 16) and Z.dtype == np.float32 and np.isfinite(Z).all()
    assert Z.std(axis=0).mean() > 1e-3
    again = src.embed(adata[:200], batch_size=77, progress=False)  # batching-invariant
    np.testing.assert_allclose(again, Z[:200], atol=1e-5)
    _assert_unchanged(before, src.model)


def _three_cells():
    # medians: G1=1, G2=2, G3=0.5, G4=4; a non-model gene carries the rest of the counts
    genes = ["ENSG_A", "ENSG_B", "ENSG_C", "ENSG_D", "ENSG_OTHER"]
    X = np.array(
        [
            [2, 8, 3, 1, 86],  # scaled: A 2, B 4, C 6, D 0.25 -> C B A D (raw order: B D C A)
            [5, 0, 0, 40, 55],  # A 5, D 10 -> D A
            [0, 1, 0, 0, 9],
        ],  # B
        dtype=np.float32,
    )
    adata = ad.AnnData(X, var=pd.DataFrame(index=[f"sym{i}" for i in range(5)]))
    adata.var["gene_ids"] = genes
    medians = {"ENSG_A": 1.0, "ENSG_B": 2.0, "ENSG_C": 0.5, "ENSG_D": 4.0}
    return adata, medians


def _write_small_gf(path, tokens, medians, max_pos=16):
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=max(tokens.values()) + 1,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=max_pos,
    )
    transformers.BertForMaskedLM(config).save_pretrained(path)
    with open(path / "tok.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(path / "med.pkl", "wb") as f:
        pickle.dump(medians, f)
    return path


@needs_transformers
def test_geneformer_tokenization_exact_order(tmp_path):
    adata, medians = _three_cells()
    v2 = {
        "<pad>": 0,
        "<mask>": 1,
        "<cls>": 2,
        "<eos>": 3,
        "ENSG_A": 4,
        "ENSG_B": 5,
        "ENSG_C": 6,
        "ENSG_D": 7,
    }
    path = _write_small_gf(tmp_path / "v2", v2, medians)
    src = GeneformerSource.load(
        path, token_dictionary=path / "tok.pkl", gene_median_dictionary=path / "med.pkl"
    )
    A, B, C, D, CLS, EOS = 4, 5, 6, 7, 2, 3
    got = [t.tolist() for t in src.tokenize(adata)]
    assert got == [[CLS, C, B, A, D, EOS], [CLS, D, A, EOS], [CLS, B, EOS]]
    # truncation keeps room for <cls>/<eos>
    small = GeneformerSource.load(
        path, token_dictionary=v2, gene_median_dictionary=medians, model_input_size=4
    )
    assert [t.tolist() for t in small.tokenize(adata)][0] == [CLS, C, B, EOS]
    # obs["n_counts"] is used when present (same ranks here, only the scale changes)
    adata.obs["n_counts"] = [100.0, 100.0, 10.0]
    assert [t.tolist() for t in src.tokenize(adata)] == got

    # V1 dictionary: no special tokens
    v1 = {"<pad>": 0, "<mask>": 1, "ENSG_A": 2, "ENSG_B": 3, "ENSG_C": 4, "ENSG_D": 5}
    p1 = _write_small_gf(tmp_path / "v1", v1, medians)
    src1 = GeneformerSource.load(
        p1, token_dictionary=p1 / "tok.pkl", gene_median_dictionary=p1 / "med.pkl"
    )
    assert [t.tolist() for t in src1.tokenize(adata)] == [[4, 3, 2, 5], [5, 2], [3]]

    # embedding = mean over gene tokens of hidden_states[n_layers + emb_layer], pad-invariant
    Z = src.embed(adata, progress=False)
    model = src.model
    for i, ids in enumerate(src.tokenize(adata)):
        with torch.no_grad():
            hs = model.base_model(input_ids=torch.from_numpy(ids)[None], output_hidden_states=True)
        expected = hs.hidden_states[2 - 1][0, 1:-1].mean(0).numpy()
        np.testing.assert_allclose(Z[i], expected, atol=1e-5)
    Z_last = GeneformerSource.load(
        path, token_dictionary=v2, gene_median_dictionary=medians, emb_layer=0
    ).embed(adata, progress=False)
    assert not np.allclose(Z, Z_last)


@needs_transformers
def test_geneformer_v1_and_dictionary_discovery(tmp_path):
    path = write_geneformer(tmp_path / "v1", v2=False, max_pos=8)
    src = GeneformerSource.load(path)  # finds the single *_gc30M.pkl pair in the folder
    assert not src.special_token and src.model_input_size == 8
    tokens = src.tokenize(_gf_adata(20))
    assert max(len(t) for t in tokens) == 8
    assert src.embed(_gf_adata(20), progress=False).shape == (20, 16)


@needs_transformers
def test_geneformer_errors(tmp_path, gf_dir):
    with pytest.raises(ScResidualError, match="config.json"):
        GeneformerSource.load(tmp_path)
    bad = write_geneformer(tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    with pytest.raises(ScResidualError, match="model.safetensors"):
        GeneformerSource.load(bad)
    bad2 = write_geneformer(tmp_path / "bad2")
    (bad2 / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ScResidualError, match="re-download"):
        GeneformerSource.load(bad2)
    with pytest.raises(ScResidualError, match="emb_layer"):
        GeneformerSource.load(gf_dir, emb_layer=-5)
    two = write_geneformer(tmp_path / "two")
    (two / "token_dictionary_extra.pkl").write_bytes(pickle.dumps({"<pad>": 0}))
    with pytest.raises(ScResidualError, match="token_dictionary="):
        GeneformerSource.load(two)
    with pytest.raises(ScResidualError, match="outside the model vocabulary"):
        GeneformerSource.load(
            two,
            token_dictionary={"<pad>": 0, GF_GENES[0]: 999},
            gene_median_dictionary=_gf_medians(),
        )
    symbols = ad.AnnData(_counts(5, 4), var=pd.DataFrame(index=["A", "B", "C", "D"]))
    with pytest.raises(ScResidualError, match="0 of 4 genes"):
        GeneformerSource.load(gf_dir).embed(symbols, progress=False)


@needs_transformers
def test_geneformer_cell_without_model_genes_raises(gf_dir):
    adata = _gf_adata(4)
    adata.X = adata.X.toarray()
    adata.X[2, :25] = 0
    with pytest.raises(ScResidualError, match="1 cells express none"):
        GeneformerSource.load(gf_dir).embed(adata, progress=False)


def test_geneformer_without_transformers(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with open(tmp_path / "token_dictionary.pkl", "wb") as f:
        pickle.dump(_gf_tokens(), f)
    with open(tmp_path / "gene_median_dictionary.pkl", "wb") as f:
        pickle.dump(_gf_medians(), f)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ScResidualError, match=r"pip install scresidual\[geneformer\]"):
        GeneformerSource.load(tmp_path)


# =========================================================================== TorchSource / Obsm
def test_torch_source_module_with_genes_and_log1p():
    genes = [f"g{i}" for i in range(6)]
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3)
    before = _params(lin)
    src = TorchSource(lin, genes=genes, transform="log1p", name="lin")
    assert src.n_latent == 3
    # query has the genes shuffled, one missing, one extra
    X = _counts(50, 6, seed=5).toarray()
    var = pd.DataFrame(index=["g5", "g3", "g1", "g0", "gx"])
    adata = ad.AnnData(X[:, [5, 3, 1, 0, 2]], var=var)
    Z = src.embed(adata, batch_size=7, progress=False)
    aligned = np.zeros((50, 6), np.float32)
    aligned[:, [5, 3, 1, 0]] = X[:, [5, 3, 1, 0]]
    ref = np.log1p(aligned / aligned.sum(1, keepdims=True) * 1e4)
    with torch.no_grad():
        expected = lin(torch.from_numpy(ref.astype(np.float32))).numpy()
    np.testing.assert_allclose(Z, expected, atol=1e-4)
    assert Z.dtype == np.float32
    _assert_unchanged(before, lin)
    embed(adata, src, key_added="X_lin", progress=False)
    assert adata.obsm["X_lin"].shape == (50, 3)


def test_torch_source_callable_and_layer():
    adata = ad.AnnData(np.ones((10, 4), np.float32))
    adata.layers["counts"] = np.arange(40, dtype=np.float32).reshape(10, 4)
    src = TorchSource(lambda x: x[:, :2] * 2, layer="counts", transform=lambda a: a + 1)
    with pytest.raises(ScResidualError, match="n_latent"):
        _ = src.n_latent
    Z = src.embed(adata, progress=False)
    np.testing.assert_allclose(Z, (adata.layers["counts"][:, :2] + 1) * 2)
    assert src.n_latent == 2
    with pytest.raises(ScResidualError, match="layer 'nope'"):
        TorchSource(lambda x: x, layer="nope").embed(adata, progress=False)
    with pytest.raises(ScResidualError, match="shape"):
        TorchSource(lambda x: x.sum(1)).embed(adata, progress=False)
    with pytest.raises(ScResidualError, match="transform"):
        TorchSource(lambda x: x, transform="zscore")


def test_obsm_source():
    adata = ad.AnnData(np.zeros((5, 2), np.float32))
    adata.obsm["X_pre"] = np.arange(15, dtype=np.float64).reshape(5, 3)
    src = ObsmSource("X_pre")
    Z = src.embed(adata)
    assert Z.dtype == np.float32 and Z.shape == (5, 3) and src.n_latent == 3
    with pytest.raises(ScResidualError, match="'X_pre'"):
        ObsmSource("X_other").embed(adata)
    adata.obsm["X_nan"] = np.full((5, 2), np.nan)
    with pytest.raises(ScResidualError, match="NaN"):
        ObsmSource("X_nan").embed(adata)
    with pytest.raises(ScResidualError, match="n_latent"):
        ObsmSource("X_pre", n_latent=4).embed(adata)
