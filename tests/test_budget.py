"""The LLM budget over a stream of batches."""

from __future__ import annotations

import numpy as np
import pytest

from autoannotator.decide.budget import LLMBudget


def stream(budget: LLMBudget, prio: np.ndarray, batch: int, cand: np.ndarray | None = None,
           cost_per_call: float = 0.0) -> np.ndarray:
    asked = np.zeros(len(prio), dtype=bool)
    cand = np.ones(len(prio), dtype=bool) if cand is None else cand
    for start in range(0, len(prio), batch):
        sl = slice(start, start + batch)
        pick = budget.select(cand[sl], prio[sl])
        budget.spend(int(pick.sum()), cost_per_call * int(pick.sum()))
        asked[sl] = pick
    return asked


@pytest.mark.parametrize("share", [0.05, 0.1, 0.3])
@pytest.mark.parametrize("batch", [16, 64])
def test_share_never_exceeded_and_mostly_spent(share: float, batch: int) -> None:
    rng = np.random.default_rng(int(share * 100) + batch)
    prio = rng.beta(2, 5, size=3000)
    budget = LLMBudget(3000, share=share)
    asked = stream(budget, prio, batch)
    assert asked.sum() <= share * 3000
    assert asked.sum() >= share * 3000 - 2 * batch
    assert budget.report()["share_spent"] == pytest.approx(asked.sum() / 3000, abs=1e-4)
    # the least certain rows got the calls: asked rows sit far above the rest
    assert np.median(prio[asked]) > np.quantile(prio, 1 - 2 * share)


def test_coarse_priorities_like_paper_u() -> None:
    """U in {0, 1/3, 0.5}: a third of the rows in one bin must still be rationed, not all-or-nothing."""
    rng = np.random.default_rng(0)
    prio = rng.choice([0.0, 1 / 3, 0.5], p=[0.55, 0.4, 0.05], size=2000)
    budget = LLMBudget(2000, share=0.2)
    asked = stream(budget, prio, 50, cand=prio > 0)
    assert 0.2 * 2000 - 100 <= asked.sum() <= 0.2 * 2000
    assert asked[prio == 0.5].mean() > 0.9  # the least certain first
    assert not asked[prio == 0].any()


def test_only_candidates_are_asked_and_no_budget_passes_through() -> None:
    prio = np.linspace(0, 1, 100)
    cand = prio > 0.5
    assert (stream(LLMBudget(100), prio, 10, cand) == cand).all()
    asked = stream(LLMBudget(100, share=0.9), prio, 10, cand)
    assert not asked[~cand].any()


def test_cost_cap_within_one_batch() -> None:
    rng = np.random.default_rng(3)
    prio = rng.random(1000)
    budget = LLMBudget(1000, max_cost=0.05)
    asked = stream(budget, prio, 32, cost_per_call=0.0004)
    assert budget.cost <= 0.05 + 32 * 0.0004
    assert budget.cost >= 0.05 - 2 * 32 * 0.0004
    assert asked.sum() == budget.calls


def test_state_roundtrip_resumes_identically() -> None:
    rng = np.random.default_rng(5)
    prio = rng.random(600)
    a = LLMBudget(600, share=0.1)
    first = stream(a, prio[:300], 30)
    b = LLMBudget.from_state(a.state_dict())
    assert b.state_dict() == a.state_dict()
    rest_a = stream(a, prio[300:], 30)
    rest_b = stream(b, prio[300:], 30)
    assert (rest_a == rest_b).all() and first.sum() + rest_a.sum() <= 60


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        LLMBudget(10, share=1.5)
    with pytest.raises(ValueError):
        LLMBudget(10, max_cost=-1)


def test_a_share_cap_set_per_batch_limits_a_budget_without_one() -> None:
    """The decider's paper cap: a share handed in with each batch, moving as the run goes."""
    rng = np.random.default_rng(8)
    prio = rng.random(1000)
    budget = LLMBudget(1000)
    assert not budget.active
    asked = np.zeros(1000, dtype=bool)
    for start in range(0, 1000, 50):
        cap = 0.3 if start < 500 else 0.2  # the cap falls half way: the later batches make up for it
        pick = budget.select(np.ones(50, dtype=bool), prio[start:start + 50], share_cap=cap)
        budget.spend(int(pick.sum()))
        asked[start:start + 50] = pick
        assert budget.calls <= cap * 1000
    assert 0.2 * 1000 - 2 * 50 <= asked.sum() <= 0.2 * 1000
    # with a share of its own too, the tighter one holds
    both = LLMBudget(1000, share=0.1)
    assert both.calls_left(share_cap=0.3) == 100 and both.calls_left(share_cap=0.05) == 50
