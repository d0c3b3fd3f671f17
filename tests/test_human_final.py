"""A person's verdict stands: under the calibrated rule an LLM's answer is evidence, a reviewer's is the label."""

from __future__ import annotations

import numpy as np
import pytest

from autoannotator.decide.online import OnlineDecider


def _decide_against_a_confident_pattern(answers_final: bool):
    d = OnlineDecider(200, 2, ["a", "b"], routing="calibrated", audit=None, answers_final=answers_final)
    first = list(range(100))  # both SLMs say label 0, and the verifier confirms it every time
    d.plan(first, np.zeros((100, 2), dtype=np.int64))
    d.settle(first, {r: 0 for r in first})
    d.plan([100], np.zeros((1, 2), dtype=np.int64))
    return d.settle([100], {100: 1})[100], d.relabel()[100]


@pytest.mark.parametrize("answers_final, label, source", [(False, 0, "llm_overruled"), (True, 1, "llm_verified")])
def test_only_a_final_verifier_keeps_an_answer_against_a_confident_pattern(answers_final, label, source) -> None:
    decision, relabelled = _decide_against_a_confident_pattern(answers_final)
    assert (decision.label, decision.source) == (label, source)
    assert (relabelled.label, relabelled.source) == (label, source)  # the end-of-run relabelling agrees
