"""The decider's pattern tables, kept as rows arrive, against a fit over every row seen (the old way)."""

from __future__ import annotations

import numpy as np

from autoannotator.decide.audit import AuditSampler
from autoannotator.decide.budget import LLMBudget
from autoannotator.decide.online import OnlineDecider, share_prior
from autoannotator.decide.pattern_model import PatternModel, PatternTable, decode_patterns, pattern_ids


def _counts(keys: np.ndarray, answers: np.ndarray, n_labels: int) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for k, a in zip(keys.tolist(), answers.tolist()):
        row = out.setdefault(k, [0] * n_labels)
        if a >= 0:
            row[a] += 1
    return out


def test_a_row_that_changes_pattern_or_answer_moves_its_counts():
    rng = np.random.default_rng(3)
    n, L = 200, 3
    keys = rng.integers(0, 7, n)
    answers = rng.integers(-1, L, n)
    t = PatternTable(n, L)
    t.assign(np.arange(n), keys)
    t.answer(np.arange(n), answers)
    moved = rng.choice(n, 50, replace=False)
    keys[moved] = rng.integers(0, 9, 50)
    t.assign(moved, keys[moved])
    changed = rng.choice(n, 40, replace=False)
    answers[changed] = rng.integers(-1, L, 40)
    t.answer(changed, answers[changed])
    want = _counts(keys, answers, L)
    got = {int(k): t.answers[i].tolist() for i, k in enumerate(t.keys) if t.rows[i] > 0}
    assert got == want
    assert all(t.rows[t.index[k]] == int((keys == k).sum()) for k in want)


def test_decode_inverts_pattern_ids():
    votes = np.array([[-1, 0, 1], [1, 1, -1], [0, 0, 0], [-1, -1, -1]])
    assert (decode_patterns(pattern_ids(votes, 2), 2, 3) == votes).all()


def test_the_table_fit_equals_the_fit_over_every_row():
    rng = np.random.default_rng(0)
    n, L = 3000, 2
    y = rng.integers(0, L, n)
    votes = np.where(rng.random((n, 3)) < [0.65, 0.7, 0.85], y[:, None], 1 - y[:, None])
    votes[rng.random((n, 3)) < 0.1] = -1
    conf = np.clip(rng.normal(0.75, 0.1, (n, 3)) + 0.1 * (votes == y[:, None]), 0.5, 1.0)
    llm = np.where(rng.random(n) < 0.9, y, 1 - y)
    d = OnlineDecider(n_rows=n, n_labels=L, slm_names=["a", "b", "c"], budget=LLMBudget(n, share=0.2),
                      audit=AuditSampler(50, n, seed=1))
    for lo in range(0, n, 64):
        ids = list(range(lo, min(n, lo + 64)))
        plan = d.plan(ids, votes[ids], confidence=conf[ids])
        d.settle(ids, {r: int(llm[r]) for r in plan.ask}, {r: int(llm[r]) for r in plan.audit})
    d._refit()
    answers = d._votes[:, -1].astype(np.int64)
    assert (answers >= 0).sum() > 300  # the check is about answered rows: there must be many
    old = PatternModel(L, llm_prior=(d.llm_accuracy, 1.0), fixed_llm=True)
    old.llm_confusion = d.patterns.llm_confusion.copy()
    old.fit(pattern_ids(votes, L), share_prior(votes, L), answers)
    assert set(old.theta) == set(d.patterns.theta)
    for k, theta in old.theta.items():
        np.testing.assert_allclose(d.patterns.theta[k], theta, atol=1e-12)
    # the refined table kept batch by batch (cut points moving all along) equals one built afresh
    kept = {int(k): d._fine.answers[i].tolist() for i, k in enumerate(d._fine.keys) if d._fine.rows[i] > 0}
    d._rebuild_tables()
    fresh = {int(k): d._fine.answers[i].tolist() for i, k in enumerate(d._fine.keys) if d._fine.rows[i] > 0}
    assert kept == fresh and len(kept) > 8


def test_the_label_model_fitted_on_distinct_vote_rows_equals_the_fit_on_every_row():
    from autoannotator.decide.label_model import LabelModel

    rng = np.random.default_rng(5)
    n = 4000
    y = rng.integers(0, 3, n)
    votes = np.where(rng.random((n, 4)) < [0.6, 0.7, 0.8, 0.9], y[:, None], rng.integers(0, 3, (n, 4)))
    votes[rng.random((n, 4)) < 0.2] = -1
    every = LabelModel(3, ["a", "b", "c", "llm"], max_iter=30).fit(votes)
    uniq, count = np.unique(votes, axis=0, return_counts=True)
    assert len(uniq) < n / 10
    cells = LabelModel(3, ["a", "b", "c", "llm"], max_iter=30).fit(uniq, row_weight=count)
    assert every.n_iter == cells.n_iter
    np.testing.assert_allclose(np.exp(cells.log_confusion), np.exp(every.log_confusion), atol=1e-9)
    a, b = every.llm_verdict(votes, "llm"), cells.llm_verdict(uniq, "llm", row_weight=count)
    assert abs(a.slm_consensus_accuracy - b.slm_consensus_accuracy) < 1e-9 and a.llm_accuracy == \
        __import__("pytest").approx(b.llm_accuracy, abs=1e-9)
