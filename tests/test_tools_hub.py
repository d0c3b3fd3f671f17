"""search_models: online against recorded Hub responses served on loopback, offline from the local catalog."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hub_fixtures import FIXTURES, caches, go_online, hub, recorded_hub  # noqa: F401 (fixtures)

from autoannotator.task import LabelDef, TaskSpec
from autoannotator.discovery import hubnet
from autoannotator.discovery.candidates import ModelCandidate, weights_size
from autoannotator.discovery.hub import SearchModelsResult, _labels_from_config
from autoannotator.tools.plan_tools import make_search_models_tool


SENTI = ["positive", "negative", "neutral"]
TOX = ["toxic", "non-toxic"]
PAPER_SENTI = {"cardiffnlp/twitter-roberta-base-sentiment-latest", "cardiffnlp/twitter-xlm-roberta-base-sentiment",
               "finiteautomata/bertweet-base-sentiment-analysis"}
PAPER_TOX = {"s-nlp/roberta_toxicity_classifier", "JungleLee/bert-toxic-comment-classification",
             "garak-llm/toxic-comment-model"}


def search(**args) -> dict:
    out = make_search_models_tool().invoke(args)
    SearchModelsResult.model_validate(out)  # the declared schema, whichever path answered
    return out


def ids(out: dict) -> list[str]:
    return [c["id"] for c in out["candidates"]]


def test_online_sentiment_ranks_the_papers_models_by_labels_and_downloads(hub, caches):
    out = search(query="sentiment of tweets", labels=SENTI, limit=5)
    assert out["mode"] == "online" and out["note"] is None
    assert ids(out)[0] == "cardiffnlp/twitter-roberta-base-sentiment-latest"
    assert PAPER_SENTI <= set(ids(out))
    top = out["candidates"][0]
    assert top["labels"] == ["negative", "neutral", "positive"]  # from config.json, not model_info
    assert set(top["covers"]) == set(SENTI)
    assert top["source"] == "hub" and top["spec"] == "hf:cardiffnlp/twitter-roberta-base-sentiment-latest"
    assert top["downloads"] == 2314522 and top["likes"] == 712 and top["languages"] == ["en"]
    assert top["size_bytes"] == 498679497  # pytorch_model.bin only, not + tf_model.h5
    bertweet = next(c for c in out["candidates"] if c["id"].startswith("finiteautomata/"))
    assert bertweet["labels"] == ["NEG", "NEU", "POS"] and set(bertweet["covers"]) == set(SENTI)
    nlptown = next(c for c in out["candidates"] if c["id"].startswith("nlptown/"))
    assert nlptown["parameters"] == 167360261 and nlptown["size_bytes"] == 669491321 and nlptown["license"] == "mit"
    # Opaque LABEL_n labels cover nothing: ranked below every model that can say the labels.
    opaque = next(c for c in out["candidates"] if c["id"].startswith("illustrative-org/"))
    assert opaque["covers"] == [] and opaque is out["candidates"][-1]
    rel = [c["relevance"] for c in out["candidates"]]
    assert rel == sorted(rel, reverse=True)


def test_online_requests_are_the_documented_hub_calls(hub, caches):
    search(query="sentiment of tweets", labels=SENTI, limit=3)
    listing = [q for m, p, q in hub.requests if p == "/api/models" and "search" in q]
    assert listing and all(q["pipeline_tag"] == ["text-classification"] and q["sort"] == ["downloads"]
                           and q["full"] == ["true"] and q["cardData"] == ["true"] for q in listing)
    assert {q["search"][0] for q in listing} == {"sentiment", "tweets"}
    assert "/api/models/cardiffnlp/twitter-roberta-base-sentiment-latest" in hub.paths("/api/models/")
    assert any(p.endswith("/resolve/main/config.json") for p in hub.paths())
    # config.json went to the metadata cache: the HF cache must not gain weightless "models".
    assert not list(caches.hf.iterdir())
    assert list(caches.meta.glob("models--cardiffnlp--twitter-roberta-base-sentiment-latest/snapshots/*/config.json"))


def test_online_toxicity_prefers_models_that_say_both_labels(hub):
    out = search(query="flag toxic comments", labels=TOX, limit=4)
    assert set(ids(out)[:3]) == PAPER_TOX
    snlp = next(c for c in out["candidates"] if c["id"] == "s-nlp/roberta_toxicity_classifier")
    assert snlp["labels"] == ["neutral", "toxic"] and set(snlp["covers"]) == set(TOX)  # 'neutral' means clean
    unitary = out["candidates"][3]
    assert unitary["id"] == "unitary/toxic-bert" and unitary["covers"] == ["toxic"]
    assert unitary["downloads"] > snlp["downloads"]  # more popular, still ranked lower: it cannot say non-toxic


def test_a_repo_whose_details_fail_is_kept_with_a_note(caches, tmp_path, monkeypatch):
    root = tmp_path / "recorded"
    shutil.copytree(FIXTURES, root)
    (root / "api_models" / "finiteautomata--bertweet-base-sentiment-analysis.json").unlink()  # model_info 404s
    with recorded_hub.RecordedHub(root) as server:
        go_online(monkeypatch, server.url)
        out = search(query="sentiment", labels=SENTI, limit=10)
    assert out["mode"] == "online" and len(out["candidates"]) == 5
    flaky = next(c for c in out["candidates"] if c["id"].startswith("finiteautomata/"))
    assert flaky["note"] == "details unavailable: RepositoryNotFoundError" and flaky["labels"] == []
    assert out["candidates"][0]["id"] == "cardiffnlp/twitter-roberta-base-sentiment-latest"


def test_language_mismatch_halves_relevance(hub):
    english = {c["id"]: c["relevance"] for c in search(query="sentiment", labels=SENTI, language="en")["candidates"]}
    german = {c["id"]: c["relevance"] for c in search(query="sentiment", labels=SENTI, language="de")["candidates"]}
    latest = "cardiffnlp/twitter-roberta-base-sentiment-latest"
    assert german[latest] == pytest.approx(english[latest] / 2, abs=1e-3)
    for multi in ("cardiffnlp/twitter-xlm-roberta-base-sentiment", "nlptown/bert-base-multilingual-uncased-sentiment"):
        assert german[multi] == english[multi]


def test_labels_default_to_the_context_task(hub):
    task = TaskSpec(instruction="toxicity of comments", labels=[LabelDef(name=n) for n in TOX])
    out = make_search_models_tool(context=SimpleNamespace(task=task)).invoke({"query": "toxic comments"})
    assert set(out["candidates"][0]["covers"]) == set(TOX)


def _write_cached_classifier(cache: Path) -> None:
    repo = "cardiffnlp/twitter-roberta-base-sentiment-latest"
    recorded_hub.lay_out_cache(cache, repo, {
        "config.json": recorded_hub.fixture_file(repo, "config.json"),
        "README.md": "---\nlanguage: en\nlicense: mit\ndatasets:\n- tweet_eval\n---\n# card\n",
        "model.safetensors": b"\0" * 4096})
    recorded_hub.lay_out_cache(cache, "someone/a-text-generator", {   # not a classifier: not listed
        "config.json": json.dumps({"architectures": ["GPT2LMHeadModel"], "id2label": {"0": "LABEL_0"}})})


def test_offline_lists_cache_folders_and_packaged_with_the_same_schema(caches, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _write_cached_classifier(caches.hf)
    folder = tmp_path / "my-toxic-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                    "id2label": {"0": "clean", "1": "toxic"}}))
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 1000)
    settings = SimpleNamespace(model_dirs=[tmp_path], max_text_chars=1000)
    out = make_search_models_tool(settings=settings).invoke(
        {"query": "sentiment of tweets", "labels": SENTI, "limit": 20})
    assert out["mode"] == "offline" and "HF_HUB_OFFLINE" in out["note"]
    by_id = {c["id"]: c for c in out["candidates"]}
    cached = by_id["cardiffnlp/twitter-roberta-base-sentiment-latest"]
    assert cached["source"] == "hf-cache" and cached["spec"] == "hf:cardiffnlp/twitter-roberta-base-sentiment-latest"
    assert cached["license"] == "mit" and cached["languages"] == ["en"] and cached["size_bytes"] == 4096
    assert cached["downloads"] is None and set(cached["covers"]) == set(SENTI)
    assert by_id[str(folder)]["source"] == "local-dir" and by_id[str(folder)]["size_bytes"] == 1000
    assert {"vader", "textblob", "afinn", "profanity", "student"} <= set(by_id)
    assert by_id["vader"]["source"] == "packaged" and by_id["vader"]["size_bytes"]
    assert by_id["student"]["trainable"] and by_id["student"]["relevance"] < by_id["vader"]["relevance"]
    assert "someone/a-text-generator" not in by_id
    assert ids(out)[0] == "cardiffnlp/twitter-roberta-base-sentiment-latest"  # labels + "tweets" in its datasets
    assert set(out["candidates"][0]) == set(ModelCandidate.model_fields)  # same schema as online


def test_unreachable_hub_falls_back_fast_and_is_remembered(caches, monkeypatch):
    with socket.socket() as s:  # a loopback port nothing listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    go_online(monkeypatch, f"http://127.0.0.1:{port}")
    started = time.monotonic()
    out = search(query="toxic comments", labels=TOX)
    assert time.monotonic() - started < hubnet.HUB_TIMEOUT_S + 5
    assert out["mode"] == "offline" and "unreachable" in out["note"]
    assert ids(out)[0] == "profanity"
    assert "did not answer a moment ago" in search(query="toxic", labels=TOX)["note"]  # no second 3 s wait


def test_bad_arguments_come_back_as_a_message():
    msg = make_search_models_tool().invoke({"query": "", "limit": 500})
    assert isinstance(msg, str) and msg.startswith("invalid arguments for search_models:")
    assert "query" in msg and "limit" in msg


def test_helpers():
    assert _labels_from_config({"id2label": {"1": "POS", "0": "NEG"}}) == ["NEG", "POS"]
    assert _labels_from_config({"architectures": ["X"]}) == []
    assert weights_size([("model.safetensors", 10), ("pytorch_model.bin", 11), ("tf_model.h5", 12)]) == 10
    assert weights_size([("model-00001-of-00002.safetensors", 5), ("model-00002-of-00002.safetensors", 6)]) == 11
    assert weights_size([("README.md", 5)]) is None
