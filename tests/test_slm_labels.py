"""Label mapping, abstention and the catalog's choices; no model weights needed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autoannotator.config import Settings
from autoannotator.errors import UserError
from autoannotator.slm.base import SLM
from autoannotator.slm.catalog import (
    build_model,
    catalog_entries,
    default_selection,
    discover_hf_models,
    parse_hf_spec,
)
from autoannotator.slm.labels import build_mapping, guess_kind
from autoannotator.slm.lexicon import VaderScorer, polarity_proba
from autoannotator.task import LabelDef, TaskSpec

SENTI3 = ["positive", "negative", "neutral"]


def task(*labels: str, instruction: str = "Classify the sentiment of the review") -> TaskSpec:
    return TaskSpec(instruction=instruction, labels=[LabelDef(name=n) for n in labels])


class Fixed(SLM):
    """Returns whatever rows it was given: lets the tests drive ``predict`` directly."""

    def __init__(self, native, task_labels, rows, override=None):
        super().__init__("fixed", build_mapping(native, task_labels, override))
        self.rows = np.asarray(rows, dtype=np.float32)

    def native_proba(self, texts):
        return self.rows[: len(texts)]


def test_hub_label_names_map_to_task_labels():
    m = build_mapping(["NEG", "NEU", "POS"], SENTI3).mapping
    assert m == {"NEG": "negative", "NEU": "neutral", "POS": "positive"}
    stars = build_mapping(["1 star", "2 stars", "3 stars", "4 stars", "5 stars"], SENTI3).mapping
    assert list(stars.values()) == ["negative", "negative", "neutral", "positive", "positive"]
    assert build_mapping(["neg", "pos"], ["Positive", "Negative"]).mapping == {"neg": "Negative", "pos": "Positive"}


def test_toxicity_names_and_the_two_meanings_of_neutral():
    assert build_mapping(["neutral", "toxic"], ["toxic", "non-toxic"]).mapping == {
        "neutral": "non-toxic", "toxic": "toxic"}
    assert build_mapping(["Not_Toxic", "TOXIC"], ["toxic", "not toxic"]).mapping == {
        "Not_Toxic": "not toxic", "TOXIC": "toxic"}
    assert build_mapping(["neutral"], SENTI3).mapping == {"neutral": "neutral"}


def test_opaque_labels_stay_unmapped_unless_told():
    assert build_mapping(["LABEL_0", "LABEL_1"], SENTI3).covered_task_labels == []
    m = build_mapping(["LABEL_0", "LABEL_1"], SENTI3, {"LABEL_0": "negative", "LABEL_1": "positive"})
    assert m.mapping == {"LABEL_0": "negative", "LABEL_1": "positive"}
    with pytest.raises(ValueError):
        build_mapping(["LABEL_0"], SENTI3, {"LABEL_0": "sports"})


def test_predict_abstains_on_unmapped_top_label_and_nan_rows():
    rows = [[0.7, 0.2, 0.1],   # top = positive
            [0.1, 0.2, 0.7],   # top = neutral, which a 2-label task cannot express -> abstain
            [np.nan] * 3,      # no opinion
            [0.2, 0.6, 0.2]]   # negative
    pred = Fixed(SENTI3, ["negative", "positive"], rows).predict(["a", "b", "", "d"])
    assert pred.votes.tolist() == [1, -1, -1, 0]
    assert pred.confidence[0] == pytest.approx(0.7)
    assert pred.confidence[1] == 0 and pred.confidence[2] == 0
    assert np.allclose(pred.proba[1], [0.2, 0.1])


def test_polarity_proba_argmax_is_the_library_rule():
    s = np.array([1.0, 0.05, 0.0499, 0.0, -0.0499, -0.05, -1.0])
    p = polarity_proba(s, threshold=VaderScorer.threshold, temperature=VaderScorer.temperature)
    assert np.allclose(p.sum(axis=1), 1.0)
    names = [SENTI3[i] for i in p.argmax(axis=1)]
    assert names == ["positive", "positive", "neutral", "neutral", "neutral", "negative", "negative"]
    assert p[0, 0] > 0.99 and p[3, 2] > 0.5


def test_guess_kind():
    assert guess_kind(["NEG", "NEU", "POS"]) == "sentiment"
    assert guess_kind(["neutral", "toxic"]) == "toxicity"
    assert guess_kind(["LABEL_0", "LABEL_1"]) == "other"


def test_default_selection_per_kind():
    assert default_selection(task(*SENTI3), 3) == ["vader", "textblob", "student"]
    assert default_selection(task(*SENTI3), 5) == ["vader", "textblob", "afinn", "student"]
    assert default_selection(task(*SENTI3), 1) == ["student"]
    tox = task("toxic", "non-toxic", instruction="Is the comment toxic?")
    assert default_selection(tox, 3) == ["profanity", "student"]
    assert default_selection(task("sports", "politics", instruction="Topic of the news item"), 3) == ["student"]
    # kind says sentiment (the word 'review'), but no scorer can vote for these labels
    assert default_selection(task("food", "service", instruction="What is the review about?"), 3) == ["student"]


def test_parse_hf_spec():
    assert parse_hf_spec("hf:org/name") == ("org/name", None)
    assert parse_hf_spec("hf:org/name#LABEL_0=negative, LABEL_1=") == ("org/name", {"LABEL_0": "negative",
                                                                                      "LABEL_1": None})
    assert parse_hf_spec("hf:/models/a#b") == ("/models/a#b", None)


def test_build_model_rejects_unknown_and_useless_models():
    with pytest.raises(UserError, match="unknown model"):
        build_model("nope", task(*SENTI3), Settings())
    with pytest.raises(UserError, match="can vote for none"):
        build_model("profanity", task(*SENTI3), Settings())


def test_catalog_survives_missing_cache_and_finds_local_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-such-cache"))
    good = tmp_path / "models" / "senti"
    good.mkdir(parents=True)
    (good / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                  "id2label": {"0": "NEG", "1": "POS"}}))
    (good / "README.md").write_text("---\nlicense: mit\n---\n# a model")
    encoder = tmp_path / "models" / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    settings = Settings(model_dirs=[tmp_path / "models", tmp_path / "missing"])
    found = discover_hf_models(task(*SENTI3), settings)
    assert [e.name for e in found] == [f"hf:{good}"]
    assert found[0].kind == "sentiment" and found[0].licence == "mit"
    assert found[0].expresses == ["positive", "negative"]
    names = [e.name for e in catalog_entries(task(*SENTI3), settings)]
    assert names[:5] == ["vader", "textblob", "afinn", "profanity", "student"]
