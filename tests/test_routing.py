"""The routing rule and the beta branch: pure functions, no LLM."""

import numpy as np
import pytest

from autoannotator.ensemble import is_hard, tally
from autoannotator.graphs.routing import (
    hard_positions,
    route_after_accept,
    route_after_ensemble,
    route_next_batch,
    should_finetune,
)


def test_tally_unanimous_split_and_abstain():
    votes = np.array([[0, 0, 0], [0, 1, 1], [0, 1, 2], [1, -1, 1], [-1, -1, -1], [0, -1, -1]])
    majority, u, n = tally(votes, n_labels=3, min_votes=2)
    assert majority.tolist() == [0, 1, 0, 1, -1, 0]
    assert n.tolist() == [3, 3, 3, 2, 0, 1]
    assert u[0] == 0.0
    assert u[1] == pytest.approx(1 / 3)
    assert u[2] == pytest.approx(2 / 3)
    assert u[3] == 0.0  # two non-abstaining votes agree: U is over the votes cast
    assert u[4] == 1.0  # nobody voted
    assert u[5] == 1.0  # one vote is below min_votes: no consensus


def test_tally_min_votes_one_accepts_a_lone_vote():
    _, u, _ = tally(np.array([[2, -1, -1]]), n_labels=3, min_votes=1)
    assert u[0] == 0.0


def test_default_epsilon_makes_any_disagreement_hard():
    from autoannotator.config import Settings

    eps = Settings().epsilon
    assert not is_hard(0.0, eps)
    for k in range(2, 17):
        assert is_hard(1 / k, eps)  # the smallest non-zero U with k voters


def _state(uncertainty, eps=1e-6, **extra):
    return {"batch": {"uncertainty": uncertainty}, "epsilon": eps, "n_rows": 10, "beta": 5, **extra}


def test_route_after_ensemble():
    assert route_after_ensemble(_state([0.0, 0.0])) == "accept"
    assert route_after_ensemble(_state([0.0, 1 / 3])) == "verify"
    assert route_after_ensemble(_state([None, 0.0])) == "accept"  # empty text: never sent to the LLM
    assert route_after_ensemble(_state([0.0, 1 / 3], eps=0.5)) == "accept"
    assert hard_positions(_state([0.5, 0.0, None, 2 / 3], eps=0.5)) == [0, 3]


def test_beta_branch():
    assert should_finetune(5, 0, beta=5, has_trainable=True)
    assert not should_finetune(4, 0, beta=5, has_trainable=True)
    assert not should_finetune(50, 0, beta=5, has_trainable=False)
    assert not should_finetune(9, 5, beta=5, has_trainable=True)
    assert should_finetune(10, 5, beta=5, has_trainable=True)


def test_route_after_accept_and_next_batch():
    base = {"n_rows": 10, "beta": 5, "has_trainable": True}
    assert route_after_accept({**base, "cursor": 4, "pool_size": 5, "pool_at_last_finetune": 0}) == "finetune"
    assert route_after_accept({**base, "cursor": 4, "pool_size": 3, "pool_at_last_finetune": 0}) == "load_batch"
    assert route_after_accept({**base, "cursor": 10, "pool_size": 3, "pool_at_last_finetune": 0}) == "final_fit"
    assert route_next_batch({"n_rows": 0, "cursor": 0}) == "final_fit"
    # the finishing steps run once: a run resumed after them goes straight to the report
    assert route_after_accept({**base, "cursor": 10, "pool_size": 3, "pool_at_last_finetune": 0,
                               "finalized": True}) == "report"
    assert route_next_batch({"n_rows": 0, "cursor": 0, "finalized": True}) == "report"
