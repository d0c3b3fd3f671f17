"""The pretrained wheel scorers on sentences whose answer nobody disputes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from autoannotator.config import Settings
from autoannotator.slm.catalog import build_model
from autoannotator.task import LabelDef, TaskSpec

SENTI = TaskSpec(instruction="Sentiment of the review",
                 labels=[LabelDef(name=n) for n in ("positive", "negative", "neutral")])
TOX = TaskSpec(instruction="Is the comment toxic?", labels=[LabelDef(name=n) for n in ("toxic", "non-toxic")])
TEXTS = ["I love it, wonderful and great!", "This is terrible, awful and horrible. I hate it.",
         "The box is on the table.", ""]


@pytest.mark.parametrize("name", ["vader", "textblob", "afinn"])
def test_sentiment_scorers_on_obvious_sentences(name):
    model = build_model(name, SENTI, Settings())
    pred = model.predict(TEXTS)
    assert pred.votes.tolist() == [0, 1, 2, -1]
    native = model.native_proba(TEXTS)
    assert np.isnan(native[3]).all()
    assert np.allclose(native[:3].sum(axis=1), 1.0)
    assert pred.confidence[0] > 0.6 and pred.confidence[1] > 0.6


def test_two_label_sentiment_task_abstains_on_neutral_text():
    two = TaskSpec(instruction="Sentiment", labels=[LabelDef(name="negative"), LabelDef(name="positive")])
    assert build_model("vader", two, Settings()).predict(TEXTS).votes.tolist() == [1, 0, -1, -1]


def test_profanity_flags_profane_text():
    model = build_model("profanity", TOX, Settings())
    pred = model.predict(["You are a fucking idiot, shut the fuck up", "Have a lovely day, friend", "  "])
    assert pred.votes.tolist() == [0, 1, -1]


def test_huge_text_is_cheap():
    model = build_model("vader", SENTI, Settings(max_text_chars=2000))
    start = time.perf_counter()
    pred = model.predict(["I love it. " * 100_000])  # ~1 MB
    assert time.perf_counter() - start < 2.0
    assert pred.votes.tolist() == [0]
