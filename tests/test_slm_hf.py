"""HFClassifier on a tiny BERT the test creates: by folder, and by hub id from an offline cache."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autoannotator.config import Settings
from autoannotator.errors import UserError
from autoannotator.slm.catalog import build_model, discover_hf_models
from autoannotator.slm.hf import HFClassifier
from autoannotator.slm.student import minilm_path
from autoannotator.task import LabelDef, TaskSpec

SENTI3 = ["positive", "negative", "neutral"]
TASK = TaskSpec(instruction="Sentiment of the review", labels=[LabelDef(name=n) for n in SENTI3])
REPO_ID = "tiny-org/tiny-bert"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["A much longer sentence that goes on and on about the product and how it broke after a week.",
         "ok", "", "Fine.", "Great value, would buy again!", "meh " * 40, "Terrible."]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, initializer_range=0.2, id2label={0: "NEG", 1: "NEU", 2: "POS"},
                     label2id={"NEG": 0, "NEU": 1, "POS": 2})
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.mul_(10)  # with the wide init: rows differ, so a misplaced row shows
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture()
def hub_cache(tiny_dir, tmp_path, monkeypatch) -> Path:
    """A Hugging Face cache as the hub client lays it out: blobs, snapshot symlinks, refs/main."""
    cache = tmp_path / "hf" / "hub"
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in tiny_dir.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        (repo / "blobs" / digest).write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("..", "..", "blobs", digest))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def reference_proba(clf: HFClassifier, texts: list[str]) -> np.ndarray:
    """One text at a time, no padding: what the batched, sorted path must reproduce row for row."""
    rows = []
    with torch.inference_mode():
        for t in texts:
            enc = clf.tokenizer(t, truncation=True, max_length=clf.max_length, return_tensors="pt")
            rows.append(torch.softmax(clf.model(**enc).logits.float(), -1)[0].numpy())
    return np.stack(rows)


def test_local_folder_mapping_and_input_order(tiny_dir):
    clf = HFClassifier.from_pretrained(str(tiny_dir), SENTI3, batch_size=2, device="cpu")
    assert clf.mapping.mapping == {"NEG": "negative", "NEU": "neutral", "POS": "positive"}
    got = clf.native_proba(TEXTS)
    assert np.isnan(got[2]).all()
    keep = [i for i, t in enumerate(TEXTS) if t]
    want = reference_proba(clf, [TEXTS[i] for i in keep])
    gaps = np.abs(want[:, None] - want[None]).max(axis=-1) + np.eye(len(want))
    assert gaps.min() > 1e-3  # every row differs from every other by far more than the tolerance
    np.testing.assert_allclose(got[keep], want, atol=1e-5)
    pred = clf.predict(TEXTS)
    assert pred.votes[2] == -1 and (pred.votes[keep] >= 0).all()


def test_huge_text_is_cheap(tiny_dir):
    clf = HFClassifier.from_pretrained(str(tiny_dir), SENTI3, device="cpu", max_text_chars=5000)
    start = time.perf_counter()
    assert clf.predict(["word " * 200_000]).votes[0] >= 0
    assert time.perf_counter() - start < 2.0


def test_hub_id_from_offline_cache(tiny_dir, hub_cache):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    by_id = HFClassifier.from_pretrained(REPO_ID, SENTI3, device="cpu")
    by_dir = HFClassifier.from_pretrained(str(tiny_dir), SENTI3, device="cpu")
    assert by_id.name == f"hf:{REPO_ID}"
    np.testing.assert_array_equal(by_id.native_proba(TEXTS), by_dir.native_proba(TEXTS))


def test_catalog_finds_and_builds_cached_model(hub_cache):
    found = discover_hf_models(TASK)
    assert [e.name for e in found] == [f"hf:{REPO_ID}"]
    assert found[0].kind == "sentiment" and found[0].native_labels == ["NEG", "NEU", "POS"]
    model = build_model(f"hf:{REPO_ID}", TASK, Settings(device="cpu"))
    assert model.predict(["nice"]).votes.shape == (1,)
    with pytest.raises(UserError, match="cannot load"):
        build_model("hf:tiny-org/not-there", TASK, Settings(device="cpu"))


def test_spec_mapping_override_flips_votes(tiny_dir):
    plain = build_model(f"hf:{tiny_dir}", TASK, Settings(device="cpu"))
    flipped = build_model(f"hf:{tiny_dir}#POS=negative,NEG=positive", TASK, Settings(device="cpu"))
    assert flipped.mapping.mapping["POS"] == "negative"
    a, b = plain.predict(TEXTS).votes, flipped.predict(TEXTS).votes
    swap = {0: 1, 1: 0, 2: 2, -1: -1}
    assert [swap[v] for v in a.tolist()] == b.tolist()
