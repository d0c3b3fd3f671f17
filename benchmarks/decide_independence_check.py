"""Why the calibrated rule does not route on a Dawid–Skene posterior: the lexicons err together.

On one UCI file: vader and textblob votes (sign of the score, |score| <= 0.05 abstains), and a
simulated LLM right with probability 0.9 on every row (the bench's seeded draw). Prints each
lexicon's true accuracy, what Dawid–Skene (decide/label_model.py) estimates with the LLM on every
row, the accuracy of its posterior against the LLM alone, and per vote pattern the true P(positive)
next to the pattern model's estimate (decide/pattern_model.py) from the same LLM answers.

    PYTHONPATH=. .venv/bin/python benchmarks/decide_independence_check.py ../shared/data/uci-sentences/amazon.csv
"""

from __future__ import annotations

import csv
import random
import sys

import numpy as np
from textblob import TextBlob
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from autoannotator.decide.label_model import LabelModel, one_coin
from autoannotator.decide.online import share_prior
from autoannotator.decide.pattern_model import PatternModel, pattern_ids

LABELS = ["negative", "positive"]


def main(path: str) -> None:
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    gold = np.array([LABELS.index(r["label"]) for r in rows])
    sia = SentimentIntensityAnalyzer()
    sign = lambda s: 1 if s > 0.05 else (0 if s < -0.05 else -1)  # noqa: E731
    votes = np.array([[sign(sia.polarity_scores(r["text"])["compound"]), sign(TextBlob(r["text"]).sentiment.polarity)]
                      for r in rows])
    llm = np.array([g if random.Random(f"0:{i}").random() < 0.9 else 1 - g for i, g in enumerate(gold)])
    for j, name in enumerate(("vader", "textblob")):
        voted = votes[:, j] >= 0
        print(f"{name}: votes on {voted.mean():.3f} of rows, right on {(votes[voted, j] == gold[voted]).mean():.3f}")
    ds = LabelModel(2, ["vader", "textblob", "llm"]).fit(np.column_stack([votes, llm]))
    print("Dawid-Skene estimates:", {k: round(r.accuracy, 3) for k, r in ds.reliability().items()})
    post = ds.posterior(np.column_stack([votes, llm]))
    print(f"Dawid-Skene posterior accuracy {(post.argmax(1) == gold).mean():.3f}, LLM alone {(llm == gold).mean():.3f}")
    pats = pattern_ids(votes, 2)
    pm = PatternModel(2, fixed_llm=True)
    pm.llm_confusion = one_coin(0.9, 2)
    pm.fit(pats, share_prior(votes, 2), llm)
    slm_only = ds.posterior(np.column_stack([votes, np.full(len(gold), -1)]))
    print("pattern (vader, textblob) | rows | true P(pos) | Dawid-Skene P(pos) from SLM votes | pattern model")
    for k in np.unique(pats):
        m = pats == k
        print(f"{votes[m][0].tolist()} | {m.sum()} | {gold[m].mean():.3f} | {slm_only[m][0, 1]:.3f} | "
              f"{pm.theta[int(k)][1]:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
