"""The per-batch decision layer on synthetic streams: correlated SLMs, a good LLM, a constant one."""

from __future__ import annotations

import numpy as np
import pytest

from autoannotator.config import Settings
from autoannotator.decide.audit import AuditSampler
from autoannotator.decide.budget import LLMBudget
from autoannotator.decide.label_model import one_coin
from autoannotator.decide.logistic import NoisyLogistic, vote_features
from autoannotator.decide import online as online_module
from autoannotator.decide.online import OnlineDecider
from autoannotator.ensemble import tally
from autoannotator.run.report import unreliable_text


def correlated_stream(n: int, seed: int, shared: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """Two SLMs sharing most of their mistakes (like two lexicons): right ~0.87 each (``shared`` 0.06),
    and their agreements right ~0.94, not the 0.98 independent errors would give."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    shared_wrong = rng.random(n) < shared
    votes = np.empty((n, 2), dtype=np.int64)
    for j in range(2):
        own_wrong = rng.random(n) < 0.08
        wrong = shared_wrong ^ own_wrong
        votes[:, j] = np.where(wrong, 1 - y, y)
    votes[rng.random((n, 2)) < 0.15] = -1
    return y, votes


def run(decider: OnlineDecider, y: np.ndarray, votes: np.ndarray, answer, batch: int = 50) -> tuple[np.ndarray, int]:
    final = np.full(len(y), -1)
    calls = 0
    for start in range(0, len(y), batch):
        ids = list(range(start, min(start + batch, len(y))))
        _, u, _ = tally(votes[ids], 2, 2)
        plan = decider.plan(ids, votes[ids], uncertainty=u.tolist())
        answers = {r: answer(r) for r in plan.ask}
        audit = {r: answer(r) for r in plan.audit}
        calls += len(answers)
        for rid, d in decider.settle(ids, answers, audit).items():
            final[rid] = d.label
    for rid, d in decider.relabel().items():
        final[rid] = d.label
    return final, calls


def good_llm(y: np.ndarray, q: float = 0.9, seed: int = 0):
    rng = np.random.default_rng(seed + 100)
    right = rng.random(len(y)) < q
    return lambda r: int(y[r] if right[r] else 1 - y[r])


def test_calibrated_beats_majority_and_uses_fewer_calls_than_all() -> None:
    y, votes = correlated_stream(2000, 1)
    d = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", audit=AuditSampler(40, 2000))
    final, calls = run(d, y, votes, good_llm(y))
    majority, _, _ = tally(votes, 2, 1)
    assert (final == y).mean() > (majority == y).mean() + 0.04
    assert (final == y).mean() >= 0.9
    assert calls < 0.6 * 2000
    assert not d.verdict().unreliable


def test_weak_correlated_slms_send_almost_everything() -> None:
    """Agreements right ~0.78 < the LLM's 0.9: asking is worth it nearly everywhere."""
    y, votes = correlated_stream(1000, 7, shared=0.22)
    d = OnlineDecider(1000, 2, ["a", "b"], routing="calibrated", explore=True)
    final, calls = run(d, y, votes, good_llm(y))
    assert calls > 0.8 * 1000 and (final == y).mean() >= 0.88


def test_constant_llm_is_judged_unreliable_and_does_no_harm() -> None:
    y, votes = correlated_stream(2000, 2)
    d = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", audit=AuditSampler(40, 2000))
    final, calls = run(d, y, votes, lambda r: 1)
    v = d.verdict()
    assert v.unreliable and v.agreement == pytest.approx(v.independent_agreement)
    majority, _, _ = tally(votes, 2, 1)
    assert (final == y).mean() >= (majority == y).mean() - 0.01
    assert calls < 0.1 * 2000  # no longer asked once judged


def positive_leaning_stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two lexicon-like SLMs that call many negative rows positive together (as on movie-review sentences):
    their agreeing "positive" labels are right only ~0.69, their agreeing "negative" ones ~0.84."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    shared_wrong = rng.random(n) < np.where(y == 1, 0.10, 0.40)
    votes = np.empty((n, 2), dtype=np.int64)
    for j in range(2):
        wrong = shared_wrong ^ (rng.random(n) < 0.12)
        votes[:, j] = np.where(wrong, 1 - y, y)
    votes[rng.random((n, 2)) < 0.2] = -1
    return y, votes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_good_llm_beside_weak_slms_is_not_judged_unreliable(seed: int) -> None:
    """The symmetric case of the constant LLM: here the SLMs are the weak side. Agreement alone cannot tell
    which side is wrong, so a 0.9 LLM must not be thrown away because the SLMs' labels are worse than a
    vote share suggests (it was, and the run fell to the SLMs' 0.68)."""
    y, votes = positive_leaning_stream(4000, seed)
    d = OnlineDecider(4000, 2, ["a", "b"], routing="calibrated", audit=AuditSampler(80, 4000))
    final, _ = run(d, y, votes, good_llm(y))
    assert not d.verdict().unreliable
    assert (final == y).mean() >= 0.88


def test_the_verdict_says_which_check_failed() -> None:
    y, votes = correlated_stream(2000, 2)
    d = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", audit=AuditSampler(40, 2000))
    run(d, y, votes, lambda r: 1)
    v = d.verdict(estimates=True).as_dict(["neg", "pos"])
    assert v["failed_on"] == "neg" and v["failed_agreement"] == 0.0 and v["failed_floor"] == pytest.approx(0.5)
    text = unreliable_text(v, 0.9)
    assert "'neg'" in text and "0%" in text and "chance" in text


def test_paper_routing_is_the_paper_rule() -> None:
    y, votes = correlated_stream(600, 3)
    d = OnlineDecider(600, 2, ["a", "b"], routing="paper", epsilon=1e-6)
    ask = good_llm(y)
    asked_rows = []
    final = np.full(600, -1)
    for start in range(0, 600, 50):
        ids = list(range(start, start + 50))
        _, u, _ = tally(votes[ids], 2, 2)
        plan = d.plan(ids, votes[ids], uncertainty=u.tolist())
        assert plan.ask == [r for r, x in zip(ids, u) if x >= 1e-6]
        answers = {r: ask(r) for r in plan.ask}
        asked_rows += plan.ask
        for rid, dec in d.settle(ids, answers).items():
            final[rid] = dec.label
            if rid in answers:
                assert dec.label == answers[rid] and dec.source == "llm_verified"
    assert d.relabel() == {}


def test_budget_share_respected() -> None:
    y, votes = correlated_stream(2000, 4)
    d = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", budget=LLMBudget(2000, share=0.1))
    _, calls = run(d, y, votes, good_llm(y))
    assert 0.1 * 2000 - 2 * 50 <= calls <= 0.1 * 2000
    assert d.budget.report()["share_spent"] == pytest.approx(calls / 2000, abs=1e-4)


def test_restore_continues_like_an_uninterrupted_run() -> None:
    y, votes = correlated_stream(800, 5)
    answer = good_llm(y)

    def fresh() -> OnlineDecider:
        return OnlineDecider(800, 2, ["a", "b"], routing="calibrated", budget=LLMBudget(800, share=0.3),
                             audit=AuditSampler(20, 800))

    a = fresh()
    book = []
    for start in range(0, 400, 50):
        ids = list(range(start, start + 50))
        plan = a.plan(ids, votes[ids])
        answers = {r: answer(r) for r in plan.ask}
        audit = {r: answer(r) for r in plan.audit}
        for rid, dec in a.settle(ids, answers, audit).items():
            book.append({"row_id": rid, "slm": votes[rid].tolist(), "llm": answers.get(rid, audit.get(rid, -1)),
                         "audit": rid in audit, "label": dec.label, "source": dec.source})
    b = fresh()
    b.restore(a.state_dict(), book)
    for start in range(400, 800, 50):
        ids = list(range(start, start + 50))
        pa, pb = a.plan(ids, votes[ids]), b.plan(ids, votes[ids])
        assert pa.ask == pb.ask and pa.audit == pb.audit
        answers = {r: answer(r) for r in pa.ask}
        audit = {r: answer(r) for r in pa.audit}
        da, db = a.settle(ids, answers, audit), b.settle(ids, answers, audit)
        assert {k: v.label for k, v in da.items()} == {k: v.label for k, v in db.items()}
    assert a.audit_estimate() == b.audit_estimate()


def test_audit_estimate_contains_truth_on_a_synthetic_run() -> None:
    y, votes = correlated_stream(3000, 6)
    d = OnlineDecider(3000, 2, ["a", "b"], routing="calibrated", audit=AuditSampler(100, 3000))
    final = np.full(3000, -1)
    settled = []
    answer = good_llm(y)
    for start in range(0, 3000, 50):
        ids = list(range(start, start + 50))
        plan = d.plan(ids, votes[ids])
        answers = {r: answer(r) for r in plan.ask}
        for rid, dec in d.settle(ids, answers, {r: answer(r) for r in plan.audit}).items():
            final[rid] = dec.label
            if dec.source == "slm_consensus":
                settled.append(rid)
    est = d.audit_estimate()["slm_consensus"]
    true_acc = (final[settled] == y[settled]).mean()
    assert est["n"] >= 60
    assert est["interval"][0] <= true_acc <= est["interval"][1]


def test_settle_right_after_a_resume_with_an_empty_store() -> None:
    """A run stopped inside its first batch resumes with no stored row: the accept step still decides."""
    y, votes = correlated_stream(40, 8)
    d = OnlineDecider(40, 2, ["a", "b"], routing="calibrated")
    d.restore({}, [])
    ids = list(range(20))
    d.add_slm_votes(ids, votes[ids])
    out = d.settle(ids, {0: int(y[0])})
    assert len(out) == 20 and out[0].source in ("llm_verified", "llm_overruled")


def confident_stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One voter whose confident votes (p in 0.85-1.0, half the rows) are right 98 % of the time and
    whose unconfident ones (p in 0.5-0.7) 60 %: its hard votes alone are right ~79 %, below the LLM."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    sure = rng.random(n) < 0.5
    right = np.where(sure, rng.random(n) < 0.98, rng.random(n) < 0.6)
    votes = np.where(right, y, 1 - y)[:, None]
    conf = np.where(sure, rng.uniform(0.85, 1.0, n), rng.uniform(0.5, 0.7, n))[:, None]
    return y, votes, conf, sure


def run_conf(decider: OnlineDecider, y, votes, conf, answer, batch: int = 50, stop: int | None = None):
    """Like ``run`` with confidences; returns the final labels, their sources, the rows asked and a book."""
    final, source, asked, book = np.full(len(y), -1), {}, [], []
    for start in range(0, stop or len(y), batch):
        ids = list(range(start, min(start + batch, len(y))))
        plan = decider.plan(ids, votes[ids], confidence=conf[ids])
        answers = {r: answer(r) for r in plan.ask}
        audit = {r: answer(r) for r in plan.audit}
        asked += plan.ask
        for rid, d in decider.settle(ids, answers, audit).items():
            final[rid], source[rid] = d.label, d.source
            book.append({"row_id": rid, "slm": votes[rid].tolist(), "conf": conf[rid].tolist(),
                         "llm": answers.get(rid, audit.get(rid, -1)), "audit": rid in audit, "label": d.label,
                         "source": d.source})
    return final, source, asked, book


def test_confidence_bins_settle_confident_votes_and_route_the_rest() -> None:
    y, votes, conf, sure = confident_stream(2000, 11)
    answer = good_llm(y, seed=11)
    hard = OnlineDecider(2000, 2, ["s"], routing="calibrated", confidence_bins=1, posterior_model="patterns")
    final_hard, _, asked_hard, _ = run_conf(hard, y, votes, conf, answer)
    binned = OnlineDecider(2000, 2, ["s"], routing="calibrated", confidence_bins=2, posterior_model="patterns")
    final, source, asked, _ = run_conf(binned, y, votes, conf, answer)
    # hard votes: one pattern per label at ~0.79, which either asks every row of that label or (a
    # lucky first streak of answers) settles all of them at 0.79; the bins dominate either way
    acc_hard, acc = (final_hard == y).mean(), (final == y).mean()
    assert (acc >= acc_hard + 0.03 and len(asked) <= 1.1 * len(asked_hard)) or \
        (acc >= acc_hard and len(asked) <= 0.7 * len(asked_hard))
    # binned: the unconfident half is asked, the confident half settles after a short exploration
    asked_set = set(asked)
    assert 0.45 * 2000 <= len(asked) <= 0.65 * 2000
    assert np.mean([r in asked_set for r in np.nonzero(~sure)[0]]) > 0.95
    settled = [r for r, s in source.items() if s == "slm_consensus"]
    assert np.mean(sure[settled]) > 0.97 and np.mean(final[settled] == y[settled]) > 0.96
    # the confident patterns' posteriors sit near the 0.98 they are right, the unconfident near 0.6
    post = binned._posterior(np.arange(2000)).max(axis=1)
    assert abs(np.median(post[sure]) - 0.98) < 0.03 and abs(np.median(post[~sure]) - 0.6) < 0.08
    assert (final == y).mean() > 0.93


def test_logistic_posterior_learns_confidence_and_routes_the_unconfident_rows() -> None:
    """The known answer: confident votes right 0.98, unconfident ones 0.6. The logistic posterior, learnt
    from the 0.9 LLM's answers alone, must put the first well above the LLM and the second well below it,
    so the unconfident rows are asked and the confident ones settled, at least as well as the patterns do."""
    y, votes, conf, sure = confident_stream(2000, 11)
    answer = good_llm(y, seed=11)
    hard = OnlineDecider(2000, 2, ["s"], routing="calibrated", confidence_bins=1, posterior_model="patterns")
    final_hard, _, asked_hard, _ = run_conf(hard, y, votes, conf, answer)
    d = OnlineDecider(2000, 2, ["s"], routing="calibrated", posterior_model="logistic")
    final, source, asked, _ = run_conf(d, y, votes, conf, answer)
    assert d.logistic.fitted
    post = d._posterior(np.arange(2000)).max(axis=1)
    assert np.median(post[sure]) > 0.88 and np.median(post[~sure]) < 0.75  # 0.88: the asking threshold
    asked_set = set(asked)
    assert np.mean([r in asked_set for r in np.nonzero(~sure)[0]]) > 0.95
    settled = [r for r, src in source.items() if src == "slm_consensus"]
    assert len(settled) > 0.25 * 2000 and np.mean(final[settled] == y[settled]) > 0.95
    assert (final == y).mean() >= (final_hard == y).mean() and (final == y).mean() > 0.92


def test_logistic_posterior_needs_answers_of_two_labels() -> None:
    x = vote_features(np.array([[0], [1]] * 40), np.full((80, 1), 0.9), 2)
    assert not NoisyLogistic(2).fit(x, np.zeros(80, dtype=np.int64), one_coin(0.9, 2)).fitted  # one label only
    assert not NoisyLogistic(2).fit(x[:20], np.arange(20) % 2, one_coin(0.9, 2)).fitted  # too few answers
    fitted = NoisyLogistic(2).fit(x, np.arange(80) % 2, one_coin(0.9, 2))
    again = NoisyLogistic(2).load_state_dict(fitted.state_dict())
    assert np.allclose(again.posterior(x), fitted.posterior(x))


def test_logistic_em_runs_to_its_fixed_point_not_towards_the_flat_start() -> None:
    """The known answer: one voter right 0.95, 2,000 answers from a 0.9 LLM. EM stopped after a few steps
    stays near its first E-step (the answers taken at 0.9) and under-states the voter (0.930 here after 5);
    at its fixed point the posterior of the voter's label is within a point of how often it is right."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    votes = np.where(rng.random(2000) < 0.95, y, 1 - y)[:, None]
    answers = np.where(rng.random(2000) < 0.9, y, 1 - y)
    x = vote_features(votes, np.full((2000, 1), 0.8), 2)
    fitted = NoisyLogistic(2).fit(x, answers, one_coin(0.9, 2))
    believed = fitted.posterior(x)[np.arange(2000), votes[:, 0]].mean()
    assert abs(believed - (votes[:, 0] == y).mean()) < 0.01


def test_logistic_posterior_with_three_labels_beats_the_vote() -> None:
    """Three labels, two voters right 0.7 (a random label otherwise), their confidence carrying nothing: the
    posterior learnt from 0.9-accurate answers must label at least as well as the voters' own majority."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    votes = np.where(rng.random((600, 2)) < 0.7, y[:, None], rng.integers(0, 3, (600, 2)))
    answers = np.where(rng.random(600) < 0.9, y, rng.integers(0, 3, 600))
    x = vote_features(votes, rng.uniform(0.4, 1.0, (600, 2)), 3)
    post = NoisyLogistic(3).fit(x, answers, one_coin(0.9, 3)).posterior(x)
    assert post.shape == (600, 3) and np.allclose(post.sum(axis=1), 1.0)
    majority, _, _ = tally(votes, 3, 1)
    assert (post.argmax(axis=1) == y).mean() >= (majority == y).mean()


def test_logistic_posterior_resumes_with_the_model_it_had(monkeypatch) -> None:
    """Past the every-batch size the logistic posterior is refitted only at each LOGISTIC_GROWTH: a resumed run
    must label with the coefficients the interrupted one had, not with a fresh fit on more answers."""
    monkeypatch.setattr(online_module, "LOGISTIC_EVERY_BATCH_UPTO", 100)
    monkeypatch.setattr(online_module, "LOGISTIC_GROWTH", 0.8)
    y, votes, conf, _ = confident_stream(800, 13)
    answer = good_llm(y, seed=13)

    def fresh() -> OnlineDecider:
        return OnlineDecider(800, 2, ["s"], routing="calibrated", posterior_model="logistic",
                             audit=AuditSampler(20, 800))

    a = fresh()
    _, _, _, book = run_conf(a, y, votes, conf, answer, stop=250)
    b = fresh()
    b.restore(a.state_dict(), book)
    refits = 0
    for start in range(250, 800, 50):
        ids = list(range(start, start + 50))
        before = a._logistic_at
        pa, pb = a.plan(ids, votes[ids], confidence=conf[ids]), b.plan(ids, votes[ids], confidence=conf[ids])
        refits += a._logistic_at != before
        assert pa.ask == pb.ask and pa.confidence == pb.confidence
        answers = {r: answer(r) for r in pa.ask}
        audit = {r: answer(r) for r in pa.audit}
        da, db = a.settle(ids, answers, audit), b.settle(ids, answers, audit)
        assert {k: (v.label, v.confidence) for k, v in da.items()} == {k: (v.label, v.confidence) for k, v in db.items()}
    assert refits < 8  # most batches planned with a model fitted batches ago: the checkpointed one matters


@pytest.mark.parametrize("sparse_cuts", [False, True])
def test_confidence_bins_resume_like_an_uninterrupted_run(sparse_cuts, monkeypatch) -> None:
    if sparse_cuts:  # past the every-batch size, the cuts move only at each 70 % of growth: a resume keeps them
        monkeypatch.setattr(online_module, "CUTS_EVERY_BATCH_UPTO", 150)
        monkeypatch.setattr(online_module, "CUTS_GROWTH", 0.7)  # fits at 150, 300, 550: the stop at 400 is between
    y, votes, conf, _ = confident_stream(800, 12)
    votes = np.concatenate([votes, np.where(np.random.default_rng(3).random(800) < 0.8, y, 1 - y)[:, None]], axis=1)
    conf = np.concatenate([conf, np.random.default_rng(4).uniform(0.5, 1.0, (800, 1))], axis=1)
    answer = good_llm(y, seed=12)

    def fresh() -> OnlineDecider:
        return OnlineDecider(800, 2, ["s", "t"], routing="calibrated", budget=LLMBudget(800, share=0.5),
                             audit=AuditSampler(20, 800))

    a = fresh()
    _, _, _, book = run_conf(a, y, votes, conf, answer, stop=400)
    # stopped after planning the batch at 400 (its votes are in the checkpointed state, not the store):
    ids = list(range(400, 450))
    pa = a.plan(ids, votes[ids], confidence=conf[ids])
    b = fresh()
    b.restore(a.state_dict(), book)
    b.add_slm_votes(ids, votes[ids], conf[ids])  # what the accept step does on resume
    answers = {r: answer(r) for r in pa.ask}
    audit = {r: answer(r) for r in pa.audit}
    da, db = a.settle(ids, answers, audit), b.settle(ids, answers, audit)
    assert {k: (v.label, v.confidence) for k, v in da.items()} == {k: (v.label, v.confidence) for k, v in db.items()}
    assert [list(c) for c in a._cuts] == [list(c) for c in b._cuts] and a._split == b._split
    for start in range(450, 800, 50):
        ids = list(range(start, start + 50))
        pa, pb = a.plan(ids, votes[ids], confidence=conf[ids]), b.plan(ids, votes[ids], confidence=conf[ids])
        assert pa.ask == pb.ask and pa.audit == pb.audit and pa.confidence == pb.confidence
        answers = {r: answer(r) for r in pa.ask}
        audit = {r: answer(r) for r in pa.audit}
        da, db = a.settle(ids, answers, audit), b.settle(ids, answers, audit)
        assert {k: (v.label, v.confidence) for k, v in da.items()} == {k: (v.label, v.confidence) for k, v in db.items()}
    assert a.audit_estimate() == b.audit_estimate()


def test_paper_rule_ignores_confidences() -> None:
    """``paper`` asks and labels exactly as U >= epsilon and the LLM's answer / the majority, whatever
    the voters' confidences."""
    y, votes, conf, _ = confident_stream(600, 13)
    votes = np.concatenate([votes, np.where(np.random.default_rng(5).random(600) < 0.75, y, 1 - y)[:, None]], axis=1)
    conf = np.concatenate([conf, np.random.default_rng(6).uniform(0.5, 1.0, (600, 1))], axis=1)
    answer = good_llm(y, seed=13)
    d = OnlineDecider(600, 2, ["s", "t"], routing="paper", epsilon=1e-6, confidence_bins=2)
    for start in range(0, 600, 50):
        ids = list(range(start, start + 50))
        majority, u, _ = tally(votes[ids], 2, 2)
        plan = d.plan(ids, votes[ids], uncertainty=u.tolist(), confidence=conf[ids])
        assert plan.ask == [r for r, x in zip(ids, u) if x >= 1e-6]
        answers = {r: answer(r) for r in plan.ask}
        for k, (rid, dec) in enumerate(d.settle(ids, answers, majority=majority.tolist()).items()):
            assert dec.label == (answers[rid] if rid in answers else majority[k])
    assert d.relabel() == {}


def test_past_the_every_batch_size_the_cuts_move_at_each_step_of_growth(monkeypatch) -> None:
    """Above CUTS_EVERY_BATCH_UPTO rows seen the cut points are refitted only when the rows seen grew by
    CUTS_GROWTH; in between, the refined table still matches the cuts it was built under."""
    monkeypatch.setattr(online_module, "CUTS_EVERY_BATCH_UPTO", 200)
    monkeypatch.setattr(online_module, "CUTS_GROWTH", 0.5)
    y, votes, conf, _ = confident_stream(1000, 21)
    answer = good_llm(y, seed=21)
    d = OnlineDecider(1000, 2, ["s", "t"], routing="calibrated", budget=LLMBudget(1000, share=0.5))
    fitted_at: list[int] = []
    real = d._fit_cuts

    def spy(rows):
        fitted_at.append(len(rows))
        real(rows)

    monkeypatch.setattr(d, "_fit_cuts", spy)
    for start in range(0, 1000, 50):
        ids = list(range(start, start + 50))
        plan = d.plan(ids, votes[ids], confidence=conf[ids])
        d.settle(ids, {r: answer(r) for r in plan.ask}, {r: answer(r) for r in plan.audit})
    past = [n for n in fitted_at if n > 200]
    assert [n for n in fitted_at if n <= 200] and past  # every batch up to 200 rows, then sparsely
    assert all(b >= a * 1.5 for a, b in zip(past, past[1:])) and len(past) <= 4
    kept = {int(k): d._fine.answers[i].tolist() for i, k in enumerate(d._fine.keys) if d._fine.rows[i] > 0}
    d._rebuild_tables()
    assert kept == {int(k): d._fine.answers[i].tolist() for i, k in enumerate(d._fine.keys) if d._fine.rows[i] > 0}


def _paper_hard_calls(votes: np.ndarray) -> int:
    _, u, _ = tally(votes, 2, 2)
    return int(sum(1 for x in u.tolist() if x is not None and x >= 1e-6))


def test_the_paper_cap_asks_at_most_the_paper_rule_share_and_labels_better() -> None:
    """Beside weak, correlated SLMs the uncapped rule asks nearly every row; capped at the paper rule's
    share it spends those calls on the least certain rows and labels better than the paper rule."""
    y, votes = correlated_stream(2000, 9, shared=0.22)
    answer = good_llm(y)
    paper = OnlineDecider(2000, 2, ["a", "b"], routing="paper")
    paper_final, paper_calls = run(paper, y, votes, answer)
    capped = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", paper_cap=True)
    final, calls = run(capped, y, votes, answer)
    uncapped = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated")
    _, uncapped_calls = run(uncapped, y, votes, answer)
    assert paper_calls == _paper_hard_calls(votes)
    assert calls <= paper_calls + 50 < uncapped_calls
    assert capped.summary(["n", "p"])["paper_cap"]["held_back"] > 0
    assert (final == y).mean() > (paper_final == y).mean()


def test_the_paper_cap_waits_for_the_llm_verdict() -> None:
    """Before the verdict has its rows (answers where the SLMs agree), the cap is not applied: under it the
    LLM is sent only to split rows, and one answering a single label for everything went unnoticed."""
    y, votes = correlated_stream(2000, 10)
    d = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", paper_cap=True)
    final, _ = run(d, y, votes, lambda r: 1)
    assert d.verdict().unreliable
    assert d.reliability()["llm"]["assumed_accuracy"] is None  # the posterior takes its answers as no evidence
    keyword = (votes >= 0).all(axis=1) & (votes[:, 0] == votes[:, 1])
    assert (final[keyword] == y[keyword]).mean() > 0.85


def test_the_paper_cap_resumes_with_the_share_it_had() -> None:
    y, votes = correlated_stream(800, 11, shared=0.2)
    answer = good_llm(y)
    _, u, _ = tally(votes, 2, 2)
    u = u.tolist()

    def fresh() -> OnlineDecider:
        return OnlineDecider(800, 2, ["a", "b"], routing="calibrated", paper_cap=True, audit=AuditSampler(20, 800))

    a = fresh()
    book = []
    for start in range(0, 400, 50):
        ids = list(range(start, start + 50))
        plan = a.plan(ids, votes[ids], uncertainty=[u[r] for r in ids])
        answers = {r: answer(r) for r in plan.ask}
        audit = {r: answer(r) for r in plan.audit}
        for rid, dec in a.settle(ids, answers, audit).items():
            book.append({"row_id": rid, "slm": votes[rid].tolist(), "llm": answers.get(rid, audit.get(rid, -1)),
                         "audit": rid in audit, "label": dec.label, "source": dec.source, "uncertainty": u[rid]})
    b = fresh()
    b.restore(a.state_dict(), book)
    assert b.paper_share() == a.paper_share() and b.held_back == a.held_back > 0
    for start in range(400, 800, 50):
        ids = list(range(start, start + 50))
        pa = a.plan(ids, votes[ids], uncertainty=[u[r] for r in ids])
        pb = b.plan(ids, votes[ids], uncertainty=[u[r] for r in ids])
        assert pa.ask == pb.ask
        answers = {r: answer(r) for r in pa.ask}
        audit = {r: answer(r) for r in pa.audit}
        a.settle(ids, answers, audit), b.settle(ids, answers, audit)


def test_a_run_planned_before_a_setting_resumes_as_it_ran() -> None:
    """run.json of an older run lacks the newer label-shaping settings: resume fills in what it ran with."""
    from autoannotator.config import Settings
    from autoannotator.run.plan import frozen_settings

    old = frozen_settings({"k": 3, "beta": 250, "finetune": {"epochs": 2}, "not_frozen": 1})
    assert old["routing"] == "paper" and old["posterior_model"] == "patterns" and old["few_shot"] == 0
    assert old["cap_at_paper_share"] is False and old["finetune"].epochs == 2 and "not_frozen" not in old
    new = frozen_settings(Settings().model_dump(mode="json"))
    assert new["cap_at_paper_share"] is True and new["routing"] == "calibrated"
    d = OnlineDecider.from_settings(Settings().model_copy(update=old), 100, 2, ["a"])
    assert not d.paper_cap
    assert OnlineDecider.from_settings(Settings(), 100, 2, ["a"]).paper_cap
    assert not OnlineDecider.from_settings(Settings(llm_budget=1.0), 100, 2, ["a"]).paper_cap


def _run_with_top_up(d: OnlineDecider, y: np.ndarray, votes: np.ndarray, answer, batch: int = 50):
    """``run`` with the finishing steps of the graph: fit_final, the top-up from the reserve, relabel."""
    final = np.full(len(y), -1)
    calls = 0
    audited: set[int] = set()
    for start in range(0, len(y), batch):
        ids = list(range(start, min(start + batch, len(y))))
        _, u, _ = tally(votes[ids], 2, 2)
        plan = d.plan(ids, votes[ids], uncertainty=u.tolist())
        answers = {r: answer(r) for r in plan.ask}
        audited |= set(plan.audit)
        calls += len(answers)
        for rid, dec in d.settle(ids, answers, {r: answer(r) for r in plan.audit}).items():
            final[rid] = dec.label
    d.fit_final()
    settled = [r for r in range(len(y)) if d._votes[r, -1] < 0 and r not in audited]
    rows = d.top_up_rows([settled[i:i + 300] for i in range(0, len(settled), 300)])
    d.take_top_up({r: answer(r) for r in rows}, asked=len(rows))
    for rid, dec in d.relabel().items():
        final[rid] = dec.label
    return final, calls, rows, settled


def test_the_reserve_holds_back_a_share_of_the_cap_and_spends_it_on_the_least_sure_settled_rows() -> None:
    y, votes = correlated_stream(2000, 9, shared=0.22)
    answer = good_llm(y)
    d = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", paper_cap=True, reserve=0.3,
                      audit=AuditSampler(20, 2000))
    final, batch_calls, rows, settled = _run_with_top_up(d, y, votes, answer)
    cap = int(d.paper_share() * 2000)
    assert batch_calls <= 0.7 * cap + 50  # the batches kept to the cap less the reserve (+ one batch)
    assert 0 < len(rows) and batch_calls + len(rows) <= cap  # the top-up spends what is left, no more
    assert d.budget.calls == batch_calls + len(rows) and d.summary(["n", "p"])["top_up"]["rows"] == len(rows)
    assert set(rows) <= set(settled)
    conf = d._posterior(np.asarray(settled)).max(axis=1)
    chosen = np.isin(settled, rows)
    assert conf[chosen].max() <= conf[~chosen].min() + 1e-9  # the least sure settled rows, none surer
    assert all(d.relabel()[r].source in ("llm_verified", "llm_overruled") for r in rows)
    plain = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", paper_cap=True, audit=AuditSampler(20, 2000))
    plain_final, plain_calls = run(plain, y, votes, answer)
    assert (final == y).mean() >= (plain_final == y).mean() - 0.01  # same calls, no worse


def test_no_top_up_without_a_reserve_a_cap_or_beside_an_unreliable_llm() -> None:
    y, votes = correlated_stream(600, 3, shared=0.22)
    for d, answer in ((OnlineDecider(600, 2, ["a", "b"], routing="calibrated", paper_cap=True), good_llm(y)),
                      (OnlineDecider(600, 2, ["a", "b"], routing="calibrated", reserve=0.3), good_llm(y)),
                      (OnlineDecider(600, 2, ["a", "b"], routing="paper", paper_cap=True, reserve=0.3), good_llm(y)),
                      (OnlineDecider(600, 2, ["a", "b"], routing="calibrated", paper_cap=True, reserve=0.3),
                       lambda r: 1)):
        _, _, rows, _ = _run_with_top_up(d, y, votes, answer)
        assert rows == [] and d.topped_up == 0


def test_a_user_budget_keeps_no_reserve() -> None:
    """Under the user's --llm-budget each answer is scarce and teaches the students mid-run: the budget is paced
    over the batches as without a reserve, and nothing is asked at the end."""
    y, votes = correlated_stream(2000, 5, shared=0.22)
    runs = [OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", reserve=r, budget=LLMBudget(2000, share=0.1))
            for r in (0.0, 0.4)]
    results = [_run_with_top_up(d, y, votes, good_llm(y)) for d in runs]
    assert results[0][1] == results[1][1] > 0.09 * 2000 and results[1][2] == []


def test_fewest_reaching_takes_the_highest_gains_until_the_need_is_met() -> None:
    gain = np.array([0.1, 0.4, 0.0, 0.3, 0.2])
    cand = np.array([True, True, False, True, True])
    assert online_module._fewest_reaching(cand, gain, 0.0).sum() == 0
    assert online_module._fewest_reaching(cand, gain, 0.5).nonzero()[0].tolist() == [1, 3]  # 0.4 + 0.3 >= 0.5
    assert online_module._fewest_reaching(cand, gain, 0.7).nonzero()[0].tolist() == [1, 3]  # exactly met
    assert online_module._fewest_reaching(cand, gain, 9.0).nonzero()[0].tolist() == [0, 1, 3, 4]  # all it can


def test_an_accuracy_target_asks_only_what_the_labels_need() -> None:
    """SLMs whose agreements are right ~0.94: a 0.9 target needs a few calls, the untargeted rule many more; the
    labels land near the target (the posterior's expectation is its own, the test allows for its calibration)."""
    y, votes = correlated_stream(3000, 11)
    answer = good_llm(y)
    full = OnlineDecider(3000, 2, ["a", "b"], routing="calibrated", paper_cap=True, audit=AuditSampler(40, 3000))
    full_final, full_calls = run(full, y, votes, answer)
    targeted = OnlineDecider(3000, 2, ["a", "b"], routing="calibrated", paper_cap=True, target=0.9,
                             audit=AuditSampler(40, 3000))
    final, calls = run(targeted, y, votes, answer)
    assert calls < 0.6 * full_calls
    assert (final == y).mean() >= 0.88 and (full_final == y).mean() > (final == y).mean()
    summary = targeted.summary(["n", "p"])
    assert summary["target"] == {"accuracy": 0.9, "spared": summary["target"]["spared"]} and summary["target"]["spared"] > 0
    assert 0.88 <= summary["expected_accuracy"] <= 0.95
    higher = OnlineDecider(3000, 2, ["a", "b"], routing="calibrated", paper_cap=True, target=0.95,
                           audit=AuditSampler(40, 3000))
    _, higher_calls = run(higher, y, votes, answer)
    assert calls < higher_calls  # a stricter target pays for more answers
    assert full.summary(["n", "p"])["target"] is None


def test_an_accuracy_target_resumes_with_what_it_had_counted() -> None:
    y, votes = correlated_stream(800, 4)
    answer = good_llm(y)

    def fresh() -> OnlineDecider:
        return OnlineDecider(800, 2, ["a", "b"], routing="calibrated", paper_cap=True, target=0.85)

    _, u, _ = tally(votes, 2, 2)
    a, book = fresh(), []
    for start in range(0, 400, 50):
        ids = list(range(start, start + 50))
        plan = a.plan(ids, votes[ids], uncertainty=u[ids].tolist())
        answers = {r: answer(r) for r in plan.ask}
        for rid, dec in a.settle(ids, answers).items():
            book.append({"row_id": rid, "slm": votes[rid].tolist(), "llm": answers.get(rid, -1), "audit": False,
                         "label": dec.label, "source": dec.source, "uncertainty": float(u[rid])})
    b = fresh()
    b.restore(a.state_dict(), book)
    assert (b.expected_right, b.expected_rows, b.spared) == (a.expected_right, a.expected_rows, a.spared)
    assert a.spared > 0 and a.expected_rows == 400
    for start in range(400, 800, 50):
        ids = list(range(start, start + 50))
        pa = a.plan(ids, votes[ids], uncertainty=u[ids].tolist())
        pb = b.plan(ids, votes[ids], uncertainty=u[ids].tolist())
        assert pa.ask == pb.ask
        answers = {r: answer(r) for r in pa.ask}
        a.settle(ids, answers), b.settle(ids, answers)


def _batches_then_final_fit(d: OnlineDecider, votes: np.ndarray, answer, batch: int = 50) -> set[int]:
    """Every batch planned, answered and settled, then ``fit_final``: the decider as the top-up finds it.
    Returns the audited rows."""
    audited: set[int] = set()
    for start in range(0, len(votes), batch):
        ids = list(range(start, min(start + batch, len(votes))))
        _, u, _ = tally(votes[ids], 2, 2)
        plan = d.plan(ids, votes[ids], uncertainty=u.tolist())
        audited |= set(plan.audit)
        d.settle(ids, {r: answer(r) for r in plan.ask}, {r: answer(r) for r in plan.audit})
    d.fit_final()
    return audited


def test_the_top_up_takes_audited_rows_as_unsure_as_those_it_asks_for_free() -> None:
    """Audited rows rank with the settled ones: those above the cut are labelled by the answer the audit
    paid for (no call) and leave the audit, so what stays in it is a sample of the rows that stay settled,
    not of a set from which the top-up took the hardest rows."""
    y, votes = correlated_stream(2000, 9, shared=0.22)
    answer = good_llm(y)
    d = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", paper_cap=True, reserve=0.3,
                      audit=AuditSampler(300, 2000))
    audited = _batches_then_final_fit(d, votes, answer)
    candidates = [r for r in range(2000) if d._votes[r, -1] < 0 or r in audited]
    left = d.budget.calls_left(None, share_cap=d.paper_share())
    in_audit = d.summary(["n", "p"])["audit"]["rows"]
    rows = d.top_up_rows([candidates[i:i + 300] for i in range(0, len(candidates), 300)])
    reused = [r for r in rows if d.is_audited(r)]
    paid = [r for r in rows if not d.is_audited(r)]
    assert reused and len(paid) == int(left)  # the audited ones came on top of the cap's rows
    _, gain = d._calibrated_route(np.asarray(candidates), d._posterior(np.asarray(candidates)))
    chosen = np.isin(candidates, rows)
    assert gain[chosen].min() >= gain[~chosen].max() - 1e-12  # one cut for audited and unaudited rows alike
    calls = d.budget.calls
    d.take_top_up({r: answer(r) for r in paid}, asked=len(paid), reused=reused)
    summary = d.summary(["n", "p"])
    assert d.budget.calls == calls + len(paid) and summary["top_up"]["audited_reused"] == len(reused)
    assert summary["audit"]["rows"] == in_audit - len(reused) == summary["audit"]["estimates"]["all"]["n"]
    final = d.relabel()
    assert all(final[r].source in ("llm_verified", "llm_overruled") for r in reused)
    assert all(final[r].source == "slm_consensus" for r in audited - set(reused))


def test_the_expected_accuracy_comes_from_the_last_relabel_until_a_vote_moves_it() -> None:
    y, votes = correlated_stream(2000, 9, shared=0.22)
    d = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", paper_cap=True, reserve=0.3,
                      audit=AuditSampler(20, 2000))
    _run_with_top_up(d, y, votes, good_llm(y))  # ends with a relabel
    cached = d.expected_accuracy()
    d._last_pass = None
    assert d.expected_accuracy() == pytest.approx(cached) and cached[1] == 2000
    unasked = next(r for r in range(2000) if d._votes[r, -1] < 0)
    d.add_llm_votes({unasked: int(y[unasked])})  # an answer: the cached figure is stale
    assert d._last_pass is None and d.expected_accuracy()[0] >= cached[0]


def test_the_top_up_under_a_target_asks_only_the_shortfall() -> None:
    y, votes = correlated_stream(2000, 9, shared=0.22)
    answer = good_llm(y)
    d = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", paper_cap=True, reserve=0.3,
                      audit=AuditSampler(20, 2000))
    audited = _batches_then_final_fit(d, votes, answer)
    settled = [r for r in range(2000) if d._votes[r, -1] < 0 and r not in audited]
    blocks = [settled[i:i + 300] for i in range(0, len(settled), 300)]
    untargeted = d.top_up_rows(blocks)
    mean, n = d.expected_accuracy()
    assert n == 2000 and len(untargeted) > 20
    d.target = mean  # met already: nothing to ask
    assert d.top_up_rows(blocks) == []
    _, gain = d._calibrated_route(np.asarray(untargeted), d._posterior(np.asarray(untargeted)))
    gain = np.sort(gain)[::-1]
    d.target = mean + gain[:10].sum() / n  # exactly the ten most-gaining rows' worth
    rows = d.top_up_rows(blocks)
    assert len(rows) == 10 and set(rows) <= set(untargeted)
    d.target = 0.999  # more than the cap can buy: all the cap allows
    assert d.top_up_rows(blocks) == untargeted


def test_target_llm_means_the_assumed_llm_accuracy() -> None:
    assert online_module.resolve_target(Settings(target_accuracy="llm", llm_accuracy=0.85)) == 0.85
    assert online_module.resolve_target(Settings(target_accuracy=0.95)) == 0.95
    assert online_module.resolve_target(Settings()) is None
    assert OnlineDecider.from_settings(Settings(target_accuracy="llm"), 100, 2, ["a"]).target == 0.9


def test_each_slms_reliability_is_also_read_off_the_posterior_that_labels() -> None:
    """Two SLMs that err together: the label model, assuming independent errors, rates them well above their
    accuracy; the final posterior (anchored by the LLM's answers) is off by less than half as much (it is itself
    overconfident here: it expects 0.87 of labels right 0.84). The LLM's row says what the posterior assumes of
    it: its answers are in that posterior, so it cannot rate them."""
    y, votes = correlated_stream(2000, 9, shared=0.22)
    d = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", paper_cap=True, reserve=0.3,
                      audit=AuditSampler(20, 2000))
    _run_with_top_up(d, y, votes, good_llm(y))
    rel = d.reliability()
    for j, name in enumerate(["a", "b"]):
        voted = votes[:, j] >= 0
        truth = float((votes[voted, j] == y[voted]).mean())
        assert abs(rel[name]["posterior_accuracy"] - truth) < (rel[name]["accuracy"] - truth) / 2
        assert rel[name]["posterior_votes"] == int(voted.sum())
    assert rel["llm"]["posterior_accuracy"] is None and rel["llm"]["assumed_accuracy"] == 0.9
    paper = OnlineDecider(2000, 2, ["a", "b"], routing="paper")
    run(paper, y, votes, good_llm(y))
    rel = paper.reliability()  # the paper's labels come from no posterior
    assert rel["a"]["posterior_accuracy"] is None and rel["llm"]["assumed_accuracy"] is None


def test_the_audit_sets_the_posteriors_expectation_on_the_audited_rows_beside_its_estimate() -> None:
    y, votes = correlated_stream(2000, 9, shared=0.22)
    d = OnlineDecider(2000, 2, ["a", "b"], routing="calibrated", paper_cap=True, audit=AuditSampler(200, 2000))
    _run_with_top_up(d, y, votes, good_llm(y))  # (no reserve: no top-up)
    est = d.audit_estimate()["slm_consensus"]
    rows = np.fromiter(d._accepted, dtype=np.int64)
    conf = d._posterior(rows).max(axis=1)  # settled rows: the label is the posterior's, so its probability is the max
    assert est["n"] == len(rows) >= 150 and est["posterior_expects"] == pytest.approx(conf.mean(), abs=1e-4)
    lo, hi = est["interval"]
    assert est["posterior_within"] == (lo <= est["posterior_expects"] <= hi)
