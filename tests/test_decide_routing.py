"""The paper rule and the calibrated rule on the posterior."""

from __future__ import annotations

import numpy as np
import pytest

from autoannotator.decide.label_model import one_coin
from autoannotator.decide.routing import calibrated_route, expected_gain, paper_route, route
from autoannotator.ensemble import is_hard


def test_paper_rule_is_the_ensemble_rule() -> None:
    u = np.array([0.0, 1 / 3, 0.5, 1.0, np.nan])
    for eps in (1e-6, 0.34, 0.5):
        mask = paper_route(u, eps)
        assert mask[:4].tolist() == is_hard(u[:4], eps).tolist()
        assert not mask[4]


def test_binary_gain_is_q_minus_confidence() -> None:
    conf = np.linspace(0.5, 1.0, 11)
    post = np.column_stack([conf, 1 - conf])
    for q in (0.6, 0.9):
        gain = expected_gain(post, one_coin(q, 2))
        assert np.allclose(gain, np.maximum(q - conf, 0.0))


def test_gain_matches_brute_force_for_three_labels() -> None:
    rng = np.random.default_rng(0)
    post = rng.dirichlet(np.ones(3), size=50)
    conf = rng.dirichlet(np.ones(3) * 2, size=3) * 0.5 + np.eye(3) * 0.5
    gain = expected_gain(post, conf)
    for p, g in zip(post, gain):
        after = 0.0
        for y in range(3):
            joint = p * conf[:, y]
            after += joint.max()  # P(answer y) * max posterior after y
        assert g == pytest.approx(after - p.max(), abs=1e-12)


def test_bad_llm_is_never_asked() -> None:
    post = np.array([[0.55, 0.45], [0.5, 0.5], [0.8, 0.2]])
    constant = np.array([[0.0, 1.0], [0.0, 1.0]])  # answers label 1 whatever the truth
    mask, gain = calibrated_route(post, constant)
    assert not mask.any() and np.allclose(gain, 0)
    # an LLM at 0.45 is worth 0.55 read backwards: it can only help rows below 0.55
    mask, _ = calibrated_route(post, one_coin(0.45, 2))
    assert mask.tolist() == [False, True, False]


def test_margin_and_adaptation() -> None:
    post = np.array([[0.6, 0.4], [0.85, 0.15], [0.97, 0.03]])
    mask, _ = calibrated_route(post, one_coin(0.9, 2))
    assert mask.tolist() == [True, True, False]
    mask, _ = calibrated_route(post, one_coin(0.9, 2), margin=0.1)
    assert mask.tolist() == [True, False, False]
    mask, _ = calibrated_route(post, one_coin(0.99, 2))
    assert mask.tolist() == [True, True, True]


def test_route_dispatch() -> None:
    mask, prio = route("paper", uncertainty=np.array([0.0, 0.5]), epsilon=0.34)
    assert mask.tolist() == [False, True] and prio.tolist() == [0.0, 0.5]
    with pytest.raises(ValueError):
        route("nope")
    with pytest.raises(ValueError):
        route("calibrated", posterior=np.ones((1, 2)) / 2)
