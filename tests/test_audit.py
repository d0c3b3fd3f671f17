"""The audit sample and the accuracy estimated from agreement with an imperfect LLM."""

from __future__ import annotations

import numpy as np
import pytest

from autoannotator.decide.audit import AuditSampler, default_audit_size, estimate_accuracy, estimate_by_source, row_uniform
from autoannotator.decide.label_model import wilson


def test_default_size() -> None:
    assert default_audit_size(300) == 6 and default_audit_size(3000) == 60 and default_audit_size(100_000) == 100
    assert default_audit_size(0) == 0


def run_sampler(s: AuditSampler, settled: np.ndarray, batch: int) -> list[int]:
    picked = []
    for start in range(0, len(settled), batch):
        ids = list(range(start, min(start + batch, len(settled))))
        picked += s.pick(ids, settled[start:start + batch])
    return picked


def test_sampler_hits_target_only_on_settled_rows_and_is_resume_stable() -> None:
    rng = np.random.default_rng(0)
    settled = rng.random(3000) < 0.65
    a = AuditSampler(60, 3000, seed=1)
    picked = run_sampler(a, settled, 64)
    assert 45 <= len(picked) <= 60
    assert settled[picked].all()
    # resume half-way from the saved state: the same rows
    b = AuditSampler(60, 3000, seed=1)
    first = run_sampler(b, settled[:1472], 64)
    c = AuditSampler.from_state(b.state_dict())
    rest = []
    for start in range(1472, 3000, 64):
        ids = list(range(start, min(start + 64, 3000)))
        rest += c.pick(ids, settled[start:start + 64])
    assert first + rest == picked
    assert run_sampler(AuditSampler(60, 3000, seed=2), settled, 64) != picked
    assert row_uniform(1, 5) == row_uniform(1, 5) != row_uniform(2, 5)


def test_perfect_labels_with_a_90_percent_llm() -> None:
    out = estimate_accuracy(90, 100, 0.9, (0.88, 0.92), 2)
    assert out["estimate"] == pytest.approx(1.0)
    assert out["interval"][0] < 0.9 and out["interval"][1] == 1.0


def test_chance_llm_says_nothing() -> None:
    out = estimate_accuracy(50, 100, 0.5, (0.45, 0.55), 2)
    assert out["estimate"] is None and out["interval"] == [0.0, 1.0]


@pytest.mark.parametrize("n_labels,a_true,q_true", [(2, 0.93, 0.9), (3, 0.85, 0.8), (2, 0.75, 0.9)])
def test_interval_coverage_over_seeds(n_labels: int, a_true: float, q_true: float) -> None:
    """The true accuracy falls inside the 95 % interval in at least 93 % of 200 simulated audits."""
    covered = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        n_audit, n_q = 100, 400
        truth = rng.integers(0, n_labels, size=n_audit)

        def noisy(acc: float) -> np.ndarray:
            wrong = (truth + rng.integers(1, n_labels, size=n_audit)) % n_labels
            return np.where(rng.random(n_audit) < acc, truth, wrong)

        accepted, llm = noisy(a_true), noisy(q_true)
        q_hits = int((rng.random(n_q) < q_true).sum())  # the LLM's accuracy, estimated elsewhere
        q_hat = q_hits / n_q
        out = estimate_accuracy(int((accepted == llm).sum()), n_audit, q_hat, wilson(q_hits, n_q), n_labels)
        lo, hi = out["interval"]
        covered += lo <= a_true <= hi
    assert covered / 200 >= 0.93


def test_by_source() -> None:
    rows = [("slm_consensus", "pos", "pos")] * 9 + [("slm_consensus", "neg", "pos")] + [("student", "pos", "pos")] * 5
    out = estimate_by_source(rows, 0.9, (0.85, 0.95), 2)
    assert set(out) == {"all", "slm_consensus", "student"}
    assert out["slm_consensus"]["n"] == 10 and out["all"]["n"] == 15


def test_by_source_sets_the_posteriors_expectation_beside_the_estimate() -> None:
    """With each audited row's posterior probability of its label, every source gets the posterior's expected
    accuracy on the same rows: the audit's interval then checks the posterior's calibration without gold."""
    rows = [("slm_consensus", "pos", "pos", 0.95)] * 18 + [("slm_consensus", "neg", "pos", 0.95)] * 2 \
        + [("student", "pos", "neg", 0.6)] * 4
    out = estimate_by_source(rows, 0.9, (0.9, 0.9), 2)
    assert out["slm_consensus"]["posterior_expects"] == pytest.approx(0.95)
    assert out["all"]["posterior_expects"] == pytest.approx((20 * 0.95 + 4 * 0.6) / 24, abs=1e-4)
    lo, hi = out["slm_consensus"]["interval"]
    assert out["slm_consensus"]["posterior_within"] is (lo <= 0.95 <= hi) is True
    assert out["student"]["posterior_within"] is False  # the posterior expects 0.6 of labels the LLM never backs
    assert "posterior_expects" not in estimate_by_source([("s", "pos", "pos")], 0.9, (0.9, 0.9), 2)["s"]
