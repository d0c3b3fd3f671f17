"""Per-pattern confidence learnt from a noisy LLM, with correlated SLMs."""

from __future__ import annotations

import numpy as np

from autoannotator.decide.label_model import LabelModel, one_coin
from autoannotator.decide.online import share_prior
from autoannotator.decide.pattern_model import PatternModel, pattern_ids


def test_pattern_ids_distinguish_abstentions() -> None:
    ids = pattern_ids(np.array([[0, 1], [1, 0], [-1, 1], [0, 1]]), 2)
    assert ids[0] == ids[3] and len(set(ids.tolist())) == 3


def test_recovers_pattern_accuracy_that_independence_overstates() -> None:
    """Two voters that always agree and are right 80 %: Dawid–Skene calls their agreement near
    certain; the pattern model, from a 0.9 LLM's answers, puts it near 0.8."""
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.integers(0, 2, size=n)
    vote = np.where(rng.random(n) < 0.8, y, 1 - y)
    votes = np.column_stack([vote, vote])
    llm = np.where(rng.random(n) < 0.9, y, 1 - y)
    asked = rng.random(n) < 0.3
    answers = np.where(asked, llm, -1)
    ds = LabelModel(2, ["a", "b"]).fit(votes)
    assert ds.posterior(votes).max(axis=1).mean() > 0.9  # what independence claims
    pm = PatternModel(2, llm_prior=(0.9, 1.0), fixed_llm=True)
    pm.llm_confusion = one_coin(0.9, 2)
    pats = pattern_ids(votes, 2)
    pm.fit(pats, share_prior(votes, 2), answers)
    conf = pm.posterior(pats, share_prior(votes, 2)).max(axis=1)
    assert abs(conf.mean() - 0.8) < 0.03
    after = pm.with_llm(pm.posterior(pats, share_prior(votes, 2)), answers)
    assert (after[asked].argmax(axis=1) == llm[asked]).all()  # 0.9 LLM beats a 0.8 pattern


def test_pessimistic_lowers_thin_patterns_more() -> None:
    pm = PatternModel(2)
    pm.evidence = {1: 0.0, 2: 400.0}
    post = np.array([[0.95, 0.05], [0.95, 0.05], [1.0, 0.0]])
    low = pm.pessimistic(np.array([1, 2, 1]), post)
    assert low[0, 0] < low[1, 0] < 0.95
    assert np.allclose(low.sum(axis=1), 1.0)
    assert low[2, 0] == 1.0  # certain stays certain (no spread): sd is 0
