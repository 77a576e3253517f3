"""Stress tests: the kd/lora arms, corruptions, loaders, errors and the --quick command."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from scresidual import ScResidualError
from scresidual.image import as_images, load_cifar, load_fashion_mnist, load_mnist_csv, read_idx
from scresidual.model import ResidualModel
from scresidual.module import ResidualNetwork
from scresidual.sources import pretrain_source
from scresidual.stress import (
    check_labels,
    confuse_classes,
    domain_mismatch,
    flip_labels,
    imbalance_indices,
    main_stress_test,
    results_table,
    run_task,
    split_indices,
)
from scresidual.tabular import TabularEncoder, load_adult, load_german
from scresidual.text import (
    HashedTfidf,
    StaticTokenEmbedding,
    load_text_csv,
    rotten_tomatoes_task,
)
from scresidual.train import distillation_loss

FAST = {"max_epochs": 2, "patience": 1}
torch.set_num_threads(1)


# ----------------------------------------------------------------------------- tiny data
def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _images(n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.integers(0, 40, size=(n, 8, 8))
    for i, c in enumerate(y):  # class c lights up row c % 8 and column c // 2
        x[i, c % 8, :] += 200
        x[i, :, c // 2] += 15
    return x.clip(0, 255), y


@pytest.fixture
def image_dir(tmp_path):
    for prefix, n, seed in (("train", 300, 0), ("t10k", 100, 1)):
        x, y = _images(n, seed)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", x)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", y)
    return tmp_path


def _adult_rows(n, seed, dot=""):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rich = rng.random() < 0.3
        rows.append(
            f"{30 + 20 * rich + rng.integers(0, 10)}, Private, {rng.integers(1e4, 1e5)}, "
            f"{'Masters' if rich else 'HS-grad'}, {13 if rich else 9}, Married-civ-spouse, "
            f"Sales, Husband, White, {'Male' if i % 2 else 'Female'}, 0, 0, "
            f"{40 + 10 * rich}, {'Mexico' if i % 3 == 0 else 'United-States'}, "
            f"{'>50K' if rich else '<=50K'}{dot}"
        )
    return "\n".join(rows) + "\n"


@pytest.fixture
def tabular_dir(tmp_path):
    (tmp_path / "adult.data").write_text(_adult_rows(240, 0))
    (tmp_path / "adult.test").write_text("|1x3 Cross validator\n" + _adult_rows(120, 1, "."))
    rng = np.random.default_rng(2)
    lines = []
    for i in range(160):
        bad = i % 3 == 0
        age = 22 + (i % 40)
        lines.append(
            f"A1{1 + bad} {6 + 30 * bad} A34 A43 {1000 + 4000 * bad + rng.integers(0, 500)} "
            f"A65 A75 4 A93 A101 4 A121 {age} A143 A152 2 A173 1 A192 A201 {2 if bad else 1}"
        )
    (tmp_path / "german.data").write_text("\n".join(lines) + "\n")
    return tmp_path


def _views(n=120, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    src = rng.normal(size=(n, d)).astype(np.float32) + y[:, None]
    return {
        "source": src,
        "x": src[:, :3] + rng.normal(size=(n, 3)).astype(np.float32),
        "teacher": np.eye(k, dtype=np.float32)[y] * 3,
    }, y.astype(str)


# ----------------------------------------------------------------------------- kd / lora
def test_distillation_loss_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 4), torch.randn(8, 4), torch.randint(0, 4, (8,))
    ce = F.cross_entropy(s, y)
    p_t = torch.softmax(t / 2, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / 2, 1))).sum(1).mean()
    got = distillation_loss(ce, s, t, alpha=0.5, temperature=2.0)
    assert torch.allclose(got, 0.5 * ce + 0.5 * 4 * kl, atol=1e-6)
    assert torch.allclose(distillation_loss(ce, s, s), 0.5 * ce, atol=1e-6)


def test_lora_zero_init_reproduces_source_head():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    net = ResidualNetwork(
        arm="lora",
        source_shapes={"s": (6,)},
        residual_shapes={},
        encoders={},
        n_classes=3,
        source_head={"weight": w, "bias": b},
    )
    z = torch.randn(5, 6)
    net.fit_normalisation({"s": z * 10 + 3})  # lora keeps raw features
    assert torch.allclose(net({"s": z}), z @ torch.from_numpy(w).T + torch.from_numpy(b))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"head_lora.lora_A", "head_lora.lora_B"}


def test_lora_model_aligns_classes_and_saves(tmp_path):
    views, y = _views()
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    order = ["2", "0", "1"]  # source rows in another class order
    model = ResidualModel(
        arm="lora",
        sources=["source"],
        source_head={"weight": w, "bias": b},
        source_classes=order,
        progress=False,
        lr=0.0,
        **FAST,
    )
    model.fit(views, y)
    expected = torch.softmax(torch.from_numpy(views["source"] @ w.T + b), 1).numpy()
    np.testing.assert_allclose(model.predict_proba(views), expected[:, [1, 2, 0]], atol=1e-5)
    model.save(tmp_path / "m")
    loaded = ResidualModel.load(tmp_path / "m", progress=False)
    np.testing.assert_allclose(loaded.predict_proba(views), model.predict_proba(views), atol=1e-6)


def test_kd_arm_fits_saves_and_needs_teacher(tmp_path):
    views, y = _views()
    model = ResidualModel(
        arm="kd", residuals={"x": ("mlp", {})}, teacher="teacher", progress=False, **FAST
    ).fit(views, y)
    assert model.chosen_arm_ == "kd" and model.network.teacher == "teacher"
    no_teacher = {k: v for k, v in views.items() if k != "teacher"}
    proba = model.predict_proba(no_teacher)  # prediction does not need the teacher
    model.save(tmp_path / "kd")
    loaded = ResidualModel.load(tmp_path / "kd", progress=False)
    np.testing.assert_allclose(loaded.predict_proba(no_teacher), proba, atol=1e-6)
    with pytest.raises(ScResidualError, match="teacher"):
        ResidualModel(arm="kd", residuals={"x": ("mlp", {})}, progress=False).fit(views, y)
    with pytest.raises(ScResidualError, match="missing input view"):
        ResidualModel(
            arm="kd", residuals={"x": ("mlp", {})}, teacher="teacher", progress=False
        ).fit(no_teacher, y)
    with pytest.raises(ScResidualError, match="source_head"):
        ResidualModel(arm="lora", sources=["source"], progress=False).fit(views, y)


# ----------------------------------------------------------------------------- corruptions
def test_flip_labels_rate_and_determinism():
    y = np.arange(1000) % 10
    noisy = flip_labels(y, 0.4, seed=3)
    assert (noisy != y).sum() == 400 and noisy.max() < 10
    np.testing.assert_array_equal(noisy, flip_labels(y, 0.4, seed=3))
    assert not np.array_equal(noisy, flip_labels(y, 0.4, seed=4))
    np.testing.assert_array_equal(flip_labels(y, 0.0), y)


def test_confusion_imbalance_mismatch():
    y = np.arange(2000) % 4
    x = np.zeros((2000, 3), dtype=np.float32)
    xn, yc = confuse_classes(x, y, [(0, 1)], p=0.5, noise=0.1, seed=0)
    changed = yc != y
    assert set(y[changed]) == {0, 1} and 0.4 < changed[y < 2].mean() < 0.6
    np.testing.assert_array_equal(yc, confuse_classes(x, y, [(0, 1)], seed=0)[1])
    rows = imbalance_indices(np.arange(10_000) % 10, seed=0)
    share = np.bincount((np.arange(10_000) % 10)[rows]) / len(rows)
    np.testing.assert_allclose(share[:3], [0.35, 0.30, 0.10], atol=0.01)
    xo, yo = domain_mismatch(np.ones((50, 3)), np.arange(50) % 5, 20, n_classes=2, seed=0)
    assert xo.shape == (20, 3) and set(yo) <= {0, 1}


# ----------------------------------------------------------------------------- loaders, errors
def test_loaders(image_dir, tabular_dir, tmp_path):
    x, y = load_fashion_mnist(image_dir, "test")
    assert x.shape == (100, 1, 8, 8) and y.max() == 9
    assert read_idx(image_dir / "t10k-labels-idx1-ubyte.gz").shape == (100,)
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for i, name in enumerate([*(f"data_batch_{j}" for j in range(1, 6)), "test_batch"]):
        batch = {b"data": np.full((2, 3072), i, np.uint8), b"labels": [i % 10, 1]}
        (cifar / name).write_bytes(pickle.dumps(batch))
    x, y = load_cifar(tmp_path)
    assert x.shape == (10, 3, 32, 32) and y[0] == 0
    assert load_cifar(tmp_path, "test")[0].shape == (2, 3, 32, 32)
    pixels = pd.DataFrame(np.arange(2 * 785).reshape(2, 785) % 10)
    pixels.columns = [*(f"pixel{i}" for i in range(784)), "label"]
    pixels.to_csv(tmp_path / "m.csv", index=False)
    x, y = load_mnist_csv(tmp_path / "m.csv")  # with a header row
    assert x.shape == (2, 1, 28, 28) and len(y) == 2
    df, y = load_adult(tabular_dir, "test")
    assert len(df) == 120 and set(y) == {0, 1}
    df, y = load_german(tabular_dir)
    assert df.shape == (160, 20) and y.mean() == pytest.approx(54 / 160)
    csv = tmp_path / "t.csv.bz2"
    pd.DataFrame({"text": ["good film", "bad", "plot"], "label": ["a", "b", "c"]}).to_csv(csv)
    texts, y, classes = load_text_csv(csv, drop=["c"])
    assert texts == ["good film", "bad"] and classes == ["a", "b"]
    assert HashedTfidf(64).fit(texts).transform(texts).shape == (2, 64)


def test_hashed_tfidf_ignores_ngrams_unseen_in_fit():
    tfidf = HashedTfidf(2**10).fit(["good film", "bad film"])
    seen, unseen = tfidf.transform(["good film"]), tfidf.transform(["good film zzz qqq www"])
    # The unseen words carry no weight, so the known ones keep the whole (normalised) row.
    np.testing.assert_allclose(unseen, seen, rtol=1e-6)
    assert np.linalg.norm(seen) == pytest.approx(1.0)


def test_static_token_embedding_averages_input_vectors(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "film", "bad"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    transformers.BertModel(config).save_pretrained(tmp_path)
    features = StaticTokenEmbedding(tmp_path).fit(["unused"])
    table = features.table
    out = features.transform(["good film", "bad", ""])
    assert out.shape == (3, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], table[[5, 6]].mean(0), rtol=1e-6)  # no [CLS]/[SEP]
    np.testing.assert_allclose(out[1], table[7], rtol=1e-6)
    assert not out[2].any()  # no tokens: zeros
    with pytest.raises(ScResidualError, match="not a Hugging Face model folder"):
        StaticTokenEmbedding(tmp_path / "missing")


def test_bad_input_errors(tmp_path):
    with pytest.raises(ScResidualError, match="channels"):
        as_images(np.zeros((2, 3, 8, 8)), channels=1)
    with pytest.raises(ScResidualError, match="shape"):
        as_images(np.zeros((2, 8)))
    with pytest.raises(ScResidualError, match="outside"):
        check_labels(np.array([0, 5]), 3)
    csv = tmp_path / "t.csv"
    pd.DataFrame({"body": ["x"], "label": ["a"]}).to_csv(csv)
    with pytest.raises(ScResidualError, match="no column 'text'"):
        load_text_csv(csv)
    with pytest.raises(ScResidualError, match="not numeric"):
        TabularEncoder().fit(pd.DataFrame({"a": ["x", "y"], "b": [1, 2]}))
    with pytest.raises(ScResidualError, match="empty"):
        split_indices(1, [1, 1])
    with pytest.raises(ScResidualError, match="non-empty"):
        pretrain_source(torch.nn.Identity(), np.zeros((0, 2)), np.zeros(0, int), n_classes=2)
    with pytest.raises(ScResidualError, match="no train-images"):
        load_fashion_mnist(tmp_path)


# ----------------------------------------------------------------------------- end to end
def test_quick_image_command(image_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = [
        "image",
        "--data-dir",
        str(image_dir),
        "--out",
        str(out),
        "--quick",
        "--settings",
        "noise-0.4",
    ]
    assert main_stress_test(argv) == 0
    records = json.loads(out.read_text())
    assert [r["arm"] for r in records] == [
        "refine",
        "scratch",
        "linear-probe",
        "adapter",
        "kd",
        "lora",
    ]
    assert all(r["dataset"] == "fashion_mnist" and 0 <= r["value"] <= 1 for r in records)
    assert "lora" in capsys.readouterr().out
    # each class lights its own row and column: the arms that train on the pixels learn it
    # well above the 10% of chance, label noise in the source notwithstanding
    value = {r["arm"]: r["value"] for r in records}
    assert min(value["refine"], value["scratch"]) > 0.5, value


def _quick_tabular(tabular_dir, out, setting: str, arms: str) -> list[str]:
    """Run a quick tabular stress test into ``out``; return its argv for reruns."""
    argv = [
        "tabular",
        "--data-dir",
        str(tabular_dir),
        "--out",
        str(out),
        "--quick",
        "--settings",
        setting,
        "--arms",
        arms,
    ]
    assert main_stress_test(argv) == 0
    return argv


def test_quick_tabular_command(tabular_dir, tmp_path):
    out = tmp_path / "r.json"
    argv = _quick_tabular(tabular_dir, out, "imbalance", "refine,lora")
    records = json.loads(out.read_text())
    assert {(r["dataset"], r["metric"]) for r in records} == {
        ("adult", "accuracy"),
        ("german_credit", "roc_auc"),
    }
    # the fixtures' classes are separable from their columns: both arms score near the top
    assert all(r["value"] > 0.85 for r in records), records
    assert main_stress_test(argv[:-1] + ["nope"]) == 2


def test_resume_keeps_finished_runs(tabular_dir, tmp_path):
    out = tmp_path / "r.json"
    argv = _quick_tabular(tabular_dir, out, "noise-0.4", "scratch")
    first = json.loads(out.read_text())
    assert {r["seed"] for r in first} == {0}
    for r in first:
        r["value"] = 0.123  # a mark: a resumed run must keep these records, not redo them
    out.write_text(json.dumps(first[:1] + [{**first[1], "arm": "lora"}]))  # adult done only
    assert main_stress_test([*argv, "--seeds", "2", "--resume"]) == 0
    records = json.loads(out.read_text())
    runs = {(r["dataset"], r["seed"]): r["value"] for r in records}
    assert sorted(runs) == [("adult", 0), ("adult", 1), ("german_credit", 0), ("german_credit", 1)]
    assert runs[("adult", 0)] == 0.123  # kept
    assert runs[("german_credit", 0)] != 0.123  # its 'scratch' record was missing: rerun
    out.write_text("not json")
    assert main_stress_test([*argv, "--resume"]) == 2
    assert out.read_text() == "not json"  # a bad file is reported, not overwritten


def test_text_pipeline_with_stand_in_encoder(tmp_path):
    rng = np.random.default_rng(0)
    words = {"fresh": "great superb moving", "rotten": "dull awful boring"}
    cat = ["fresh", "rotten", "plot"] * 40
    texts = [f"{words.get(c, 'a story about')} {rng.integers(100)}" for c in cat]
    pd.DataFrame({"category": cat, "text": texts}).to_csv(
        tmp_path / "rotten_tomatoes_corpus_full.csv.bz2"
    )

    def encode(batch):  # stand-in for the sentence encoder: word presence
        return np.array([[w in t for w in ("great", "dull", "story")] for t in batch], np.float32)

    task = rotten_tomatoes_task(
        tmp_path, quick=True, encoder=encode, residual_features=HashedTfidf(64)
    )
    records = run_task(task, settings=["mismatch"], arms=["refine", "kd"])
    assert [r["metric"] for r in records] == ["macro_f1"] * 2
    assert "refine" in results_table(records)
    # every category has its own words, which the hashed TF-IDF residual reads: REFINE
    # learns them; KD follows its teacher, trained on mismatched categories, to near chance
    value = {r["arm"]: r["value"] for r in records}
    assert value["refine"] > 0.8 and value["refine"] > value["kd"] + 0.3, value
