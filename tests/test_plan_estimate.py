"""The cost plan's pure parts: the routing rule on pilot votes, the interval, and the arithmetic."""

from __future__ import annotations

import random

import numpy as np
import pytest

from autoannotator.config import PriceTable
from autoannotator.plan_estimate import (
    PilotShares,
    Timing,
    compare_with_spent,
    estimate_plan,
    pilot_shares,
    prompt_tokens,
    summary_lines,
    tokens_from_chars,
    wilson_interval,
)

PRICES = PriceTable()


def _corrected(k: int, n: int, population: int) -> tuple[float, float]:
    """The Wilson interval shrunk by the finite-population correction sqrt((N - n) / (N - 1))."""
    p = k / n
    lo, hi = wilson_interval(k, n)
    f = ((population - n) / (population - 1)) ** 0.5
    return p - (p - lo) * f, p + (hi - p) * f  # GPT-3.5-turbo: $0.50 / $1.50 per million tokens
TIMING = Timing(slm_s_per_row=0.001, llm_s_per_call=0.5, llm_concurrency=4)


def test_wilson_interval_brackets_the_share_and_covers_it():
    lo, hi = wilson_interval(40, 100)
    assert lo < 0.4 < hi and hi - lo == pytest.approx(0.19, abs=0.01)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(0, 50)[1] > 0
    assert wilson_interval(50, 50)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # Coverage: over many binomial draws the 95 % interval holds the true share about 95 % of the time.
    rng = random.Random(1)
    hits = 0
    for _ in range(2000):
        k = sum(rng.random() < 0.3 for _ in range(200))
        lo, hi = wilson_interval(k, 200)
        hits += lo <= 0.3 <= hi
    assert 0.92 < hits / 2000 < 0.98


def test_pilot_shares_apply_the_routing_rule():
    # Two frozen models and an abstaining student (-1). Rows: agree, split, one abstains, both abstain.
    votes = np.array([[0, 0, -1], [0, 1, -1], [1, -1, -1], [-1, -1, -1]])
    shares = pilot_shares(votes, n_labels=2, epsilon=1e-6, min_votes=2)
    assert shares.n == 4 and shares.hard == 3  # agree is easy; split, one vote, no vote are hard
    # A student vote settles the one-vote row (it can agree with it), never the split or the empty row.
    assert shares.irreducible == 2
    # epsilon above 0.5 accepts splits: nothing is hard but the rows with too few votes.
    loose = pilot_shares(votes, n_labels=2, epsilon=0.6, min_votes=2)
    assert loose.hard == 2 and loose.irreducible == 1


def test_estimate_without_a_trainable_model_is_the_wilson_range_times_rows():
    shares = PilotShares(n=300, hard=120, irreducible=90)
    est = estimate_plan(n_rows=3010, n_empty=10, shares=shares, tokens_in_per_call=200, tokens_out_per_call=8,
                        prices=PRICES, timing=TIMING, beta=2000, trainable=False)
    lo, hi = _corrected(120, 300, 3000)
    assert lo > wilson_interval(120, 300)[0] and hi < wilson_interval(120, 300)[1]
    assert est.n_labelled_rows == 3000
    assert est.llm_calls.expected == 1200
    assert est.llm_calls.low == round(lo * 3000) and est.llm_calls.high == round(hi * 3000)
    assert est.tokens_in.expected == 1200 * 200 and est.tokens.expected == 1200 * 208
    assert est.cost_usd.expected == pytest.approx(PRICES.cost(1200 * 200, 1200 * 8))
    assert est.llm_only.llm_calls == 3000
    assert est.llm_only.cost_usd == pytest.approx(PRICES.cost(3000 * 200, 3000 * 8))
    assert est.cost_ratio_to_llm_only.expected == pytest.approx(0.4)
    assert est.finetune_rounds.expected == 0
    # Wall: SLMs on every row + calls / concurrency x latency.
    assert est.wall_s.expected == pytest.approx(3000 * 0.001 + 1200 * 0.5 / 4)
    assert est.llm_only.wall_s == pytest.approx(3000 * 0.5 / 4)


def test_a_student_widens_the_low_end_after_its_first_round_only():
    shares = PilotShares(n=300, hard=120, irreducible=60)
    frozen = estimate_plan(n_rows=3000, n_empty=0, shares=shares, tokens_in_per_call=200, tokens_out_per_call=8,
                           prices=PRICES, timing=TIMING, beta=100, trainable=False)
    student = estimate_plan(n_rows=3000, n_empty=0, shares=shares, tokens_in_per_call=200, tokens_out_per_call=8,
                            prices=PRICES, timing=TIMING, beta=100, trainable=True)
    assert student.llm_calls.high == frozen.llm_calls.high and student.llm_calls.expected == frozen.llm_calls.expected
    lo, _ = _corrected(120, 300, 3000)
    irr_lo, _ = _corrected(60, 300, 3000)
    before = 100 / lo  # rows until the 100th hard row, at the low share
    assert student.llm_calls.low == round(lo * before + irr_lo * (3000 - before))
    assert student.llm_calls.low < frozen.llm_calls.low
    # beta larger than any pool: the student never votes, so no widening.
    never = estimate_plan(n_rows=3000, n_empty=0, shares=shares, tokens_in_per_call=200, tokens_out_per_call=8,
                          prices=PRICES, timing=TIMING, beta=100_000, trainable=True)
    assert never.llm_calls.low == frozen.llm_calls.low and never.finetune_rounds.high == 0
    # Rounds: floor(calls / beta); their training time enters the wall time.
    assert student.finetune_rounds.expected == 1200 // 100
    assert student.wall_s.expected > frozen.wall_s.expected
    assert any("irreducible" in a for a in student.assumptions)


def test_repeated_texts_are_not_paid_twice():
    shares = PilotShares(n=100, hard=50, irreducible=50)
    est = estimate_plan(n_rows=1000, n_empty=0, shares=shares, tokens_in_per_call=100, tokens_out_per_call=8,
                        prices=PRICES, timing=TIMING, beta=10**6, trainable=False, distinct_share=0.5)
    assert est.llm_calls.expected == 250 and est.llm_only.llm_calls == 500


def test_compare_with_spent_marks_each_figure_in_or_out_of_range():
    shares = PilotShares(n=300, hard=120, irreducible=90)
    est = estimate_plan(n_rows=3000, n_empty=0, shares=shares, tokens_in_per_call=200, tokens_out_per_call=8,
                        prices=PRICES, timing=TIMING, beta=2000, trainable=False)
    report = {"llm_calls": 1250, "llm_tokens_in": 1250 * 200, "llm_tokens_out": 1250 * 8,
              "est_cost_usd": PRICES.cost(1250 * 200, 1250 * 8), "timings_s": {"graph_wall": 10_000.0}}
    cmp = compare_with_spent(est, report)
    assert cmp["llm_calls"]["in_range"] and cmp["tokens"]["in_range"] and cmp["cost_usd"]["in_range"]
    assert cmp["wall_s"]["in_range"] is False and cmp["llm_calls"]["spent"] == 1250
    assert compare_with_spent(est, {"llm_calls": 0})["wall_s"]["in_range"] is None


def test_token_counts_are_chars_over_four():
    assert tokens_from_chars(0) == 1 and tokens_from_chars(401) == 100
    assert prompt_tokens(["a" * 400, "b" * 40], overhead_tokens=30) == 110 + 30


def test_summary_lines_quote_the_figures():
    shares = PilotShares(n=300, hard=120, irreducible=90)
    est = estimate_plan(n_rows=3000, n_empty=0, shares=shares, tokens_in_per_call=200, tokens_out_per_call=8,
                        prices=PRICES, timing=TIMING, beta=2000, trainable=False)
    text = "\n".join(summary_lines(est))
    assert "LLM calls: 1200" in text and "labelling everything with the LLM: 3000" in text and "40%" in text


def test_wall_time_range_covers_load_and_counts_each_round():
    shares = PilotShares(n=100, hard=40, irreducible=20)
    timing = Timing(slm_s_per_row=0.01, llm_s_per_call=1.0, llm_concurrency=2, finetune_round_s=10.0,
                    train_samples_per_s=8.0)
    est = estimate_plan(n_rows=1000, n_empty=0, shares=shares, tokens_in_per_call=100, tokens_out_per_call=8,
                        prices=PRICES, timing=timing, beta=100, trainable=True, holdout_fraction=0.2, epochs=3)
    rounds = int(est.llm_calls.expected // 100)
    train = sum(0.8 * r * 100 * 3 for r in range(1, rounds + 1)) / 8.0
    assert est.finetune_rounds.expected == rounds == 4
    assert est.wall_s.expected == pytest.approx(1000 * 0.01 + 400 * 1.0 / 2 + train + rounds * 10.0)
    assert est.wall_s.low < est.wall_s.expected / 1.9 and est.wall_s.high > est.wall_s.expected * 2.9


def test_a_pilot_of_the_whole_file_leaves_only_the_students_range():
    shares = PilotShares(n=300, hard=120, irreducible=60)
    whole = estimate_plan(n_rows=300, n_empty=0, shares=shares, tokens_in_per_call=100, tokens_out_per_call=8,
                          prices=PRICES, timing=TIMING, beta=10**6, trainable=True)
    assert whole.llm_calls.low == whole.llm_calls.expected == whole.llm_calls.high == 120
    student = estimate_plan(n_rows=300, n_empty=0, shares=shares, tokens_in_per_call=100, tokens_out_per_call=8,
                            prices=PRICES, timing=TIMING, beta=40, trainable=True)
    # 40 hard rows come after 100 rows; the other 200 may fall to the irreducible share (0.2).
    assert student.llm_calls.low == 40 + 40 and student.llm_calls.high == 120


def test_a_real_endpoints_token_range_allows_for_its_tokenizer():
    shares = PilotShares(n=100, hard=40, irreducible=20)
    plain = estimate_plan(n_rows=100, n_empty=0, shares=shares, tokens_in_per_call=100, tokens_out_per_call=8,
                          prices=PRICES, timing=TIMING, beta=10**6, trainable=False)
    wide = estimate_plan(n_rows=100, n_empty=0, shares=shares, tokens_in_per_call=100, tokens_out_per_call=8,
                         prices=PRICES, timing=TIMING, beta=10**6, trainable=False, token_high_factor=1.7)
    assert wide.tokens.expected == plain.tokens.expected and wide.tokens.high == pytest.approx(plain.tokens.high * 1.7)
    assert wide.cost_usd.high == pytest.approx(plain.cost_usd.high * 1.7)


def test_the_audit_comes_on_top_of_a_users_budget_in_the_estimate():
    """The estimate spends as the run does: a user's ``--llm-budget`` caps the routing and the declared audit comes
    on top, as it does beside the paper rule and under the default's paper cap."""
    from autoannotator.config import Settings
    from autoannotator.plan_estimate import _decide_adjustments

    def estimate(**settings):
        est = estimate_plan(n_rows=3000, n_empty=0, shares=PilotShares(n=300, hard=120, irreducible=90),
                            tokens_in_per_call=200, tokens_out_per_call=8, prices=PRICES, timing=TIMING,
                            beta=2000, trainable=False)
        if settings:
            _decide_adjustments(est, Settings(audit=60, **settings), 3000, 200, "endpoint")
        return est

    bare = estimate().llm_calls
    assert estimate(routing="paper").llm_calls.expected == bare.expected + 60
    capped = estimate(routing="calibrated").llm_calls
    assert (capped.low, capped.expected, capped.high) == (bare.low + 60, bare.expected + 60, bare.high + 60)
    budgeted = estimate(routing="calibrated", llm_budget=0.1).llm_calls
    assert budgeted.expected == budgeted.high == 300 + 60


def test_compare_with_spent_counts_the_audits_calls_too():
    shares = PilotShares(n=300, hard=120, irreducible=90)
    est = estimate_plan(n_rows=3000, n_empty=0, shares=shares, tokens_in_per_call=200, tokens_out_per_call=8,
                        prices=PRICES, timing=TIMING, beta=2000, trainable=False)
    report = {"llm_calls": 1190, "llm_tokens_in": 1190 * 200, "llm_tokens_out": 1190 * 8, "est_cost_usd": 0.1,
              "audit_llm_calls": 60, "audit_cost_usd": 0.01,
              "decision": {"audit": {"usage": {"calls": 60, "tokens_in": 60 * 200, "tokens_out": 60 * 8}}}}
    cmp = compare_with_spent(est, report)
    assert cmp["llm_calls"]["spent"] == 1250 and cmp["tokens"]["spent"] == 1250 * 208
    assert cmp["cost_usd"]["spent"] == pytest.approx(0.11)
