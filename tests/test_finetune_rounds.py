"""What a fine-tuning round trains on: every labelled row, weighted; O(beta) per round; fixed judging slices."""

from __future__ import annotations

import numpy as np
import pytest

from autoannotator.config import FinetuneSettings
from autoannotator.finetune import (agreement_share, finetune_model, labelled_rows, plan_round, row_weight,
                                    split_holdout)

from tests.test_finetune_guard import ConstantStudent

LABELS = ["a", "b"]


def _rec(rid: int, label: str | None, source: str = "slm_consensus", votes: list[str | None] | None = None,
         confidence: float | None = None) -> dict:
    rec = {"row_id": rid, "label": label, "label_source": source,
           "votes": {f"m{i}": {"label": v, "p": 0.9} for i, v in enumerate(votes or [label, label, None])}}
    if confidence is not None:
        rec["confidence"] = confidence
    return rec


def _stream(n: int, hard_every: int = 3) -> list[dict]:
    """n records in processing order: every third verified, the rest settled 2-of-2; labels alternate in blocks."""
    out = []
    for i in range(n):
        label = LABELS[(i // 7) % 2]
        out.append(_rec(i, label, "llm_verified") if i % hard_every == 0 else _rec(i, label))
    return out


def test_weights_verified_one_settled_by_posterior_else_agreement():
    cfg = FinetuneSettings(settled_weight=1.0, settled_min_confidence=0.5)
    assert row_weight(_rec(0, "a", "llm_verified", votes=["b", "b"]), cfg) == 1.0
    assert row_weight(_rec(1, "a", confidence=0.8), cfg) == 0.8  # the run's posterior wins over the votes
    assert agreement_share({"x": {"label": "a"}, "y": {"label": "a"}, "z": {"label": "b"}}, "a") == pytest.approx(2 / 3)
    assert row_weight(_rec(2, "a", votes=["a", "a", "b"]), cfg) == pytest.approx(0.666667)
    assert row_weight(_rec(3, "a", votes=["a", None, None]), cfg) == 1.0  # abstentions are not disagreement
    assert row_weight(_rec(4, "a", confidence=0.4), cfg) == 0.0  # below the floor: left out
    assert row_weight(_rec(5, "a", confidence=0.9), FinetuneSettings(settled_weight=0.5)) == 0.45
    assert row_weight(_rec(6, "a"), FinetuneSettings(train_on_settled=False)) == 0.0
    rows = labelled_rows([_rec(0, None, "skipped_empty"), _rec(1, "zzz"), _rec(2, "b", confidence=0.3),
                          _rec(3, "b", "llm_verified")], LABELS, cfg)
    assert [(r.row_id, r.label, r.verified) for r in rows] == [(3, 1, True)]


def test_a_trained_row_never_moves_into_the_held_out_slice_as_the_pool_grows():
    cfg = FinetuneSettings(holdout_fraction=0.2, min_holdout=10)
    ever_trained: set[int] = set()
    for n in range(5, 400, 7):
        train, hold = split_holdout(list(range(n)), cfg, seed=3)
        assert not set(train) & set(hold) and len(train) + len(hold) == n
        assert not ever_trained & set(hold), n
        ever_trained |= set(train)
        assert len(hold) >= min(10, n // 2)
    assert 0.14 < len(hold) / 400 < 0.26  # the hash rule gives about the fraction


def test_incremental_round_costs_o_beta_whatever_the_pool_size():
    cfg = FinetuneSettings(round_size_factor=2.0, replay_share=0.25, forgetting_rows=50)
    beta = 30
    small = plan_round(_stream(300), LABELS, cfg, beta=beta, seen_upto=200, round_=2)
    large = plan_round(_stream(10_000), LABELS, cfg, beta=beta, seen_upto=9_900, round_=2)
    for plan in (small, large):
        assert plan.n_new == 45 and plan.n_replay == 15 and len(plan.train) == 2 * beta
    assert len(large.train) == len(small.train)  # the same cost on a pool 33x as large
    # few new rows (the file's end): replay fills the round up
    tail = plan_round(_stream(3_000), LABELS, cfg, beta=beta, seen_upto=2_990, round_=5)
    assert tail.n_new <= 10 and tail.n_replay >= 50 and len(tail.train) == 2 * beta
    # rows new since the last round: all from position 9_900 on, minus the held-out ones
    new_ids = {r.row_id for r in large.train if r.row_id >= 9_900}
    assert len(new_ids) == large.n_new and large.n_new_left > 0
    assert all(r.row_id < 9_900 for r in large.train if r.row_id not in new_ids)
    assert not {r.row_id for r in large.train} & {r.row_id for r in large.holdout}


def test_over_the_cap_every_new_verified_row_is_kept_first():
    cfg = FinetuneSettings(round_size_factor=1.0, replay_share=0.0)
    plan = plan_round(_stream(600), LABELS, cfg, beta=100, seen_upto=0, round_=1)
    n_verified_new = sum(1 for r in labelled_rows(_stream(600), LABELS, cfg) if r.verified) - sum(
        r.verified for r in plan.holdout)
    assert plan.n_new == 100 and plan.n_new_left > 0 and plan.n_replay == 0
    assert sum(r.verified for r in plan.train) == min(100, n_verified_new)


def test_the_forgetting_slice_is_the_earliest_rows_and_stays_fixed():
    cfg = FinetuneSettings(forgetting_rows=40)
    first = plan_round(_stream(100), LABELS, cfg, beta=20, seen_upto=0, round_=1)
    later = plan_round(_stream(2_000), LABELS, cfg, beta=20, seen_upto=1_900, round_=9)
    assert [r.row_id for r in first.forgetting] == [r.row_id for r in later.forgetting]
    assert len(first.forgetting) == 40 and max(r.row_id for r in first.forgetting) < 80
    assert not {r.row_id for r in later.forgetting} & {r.row_id for r in later.holdout}


def test_the_gate_slice_falls_back_to_held_out_settled_rows_when_verified_rows_cannot_judge():
    cfg = FinetuneSettings(min_holdout=5, settled_holdout_fraction=0.2)
    settled_only = [_rec(i, LABELS[i % 2]) for i in range(200)]
    plan = plan_round(settled_only, LABELS, cfg, beta=50, seen_upto=0, round_=1)  # the warm start: no LLM yet
    assert plan.holdout_kind == "settled" and len({r.label for r in plan.holdout}) == 2
    one_sided = settled_only + [_rec(1000 + i, "a", "llm_verified") for i in range(100)]
    plan = plan_round(one_sided, LABELS, cfg, beta=50, seen_upto=0, round_=2)
    assert plan.holdout_kind == "verified+settled" and {r.label for r in plan.holdout} == {0, 1}
    both = settled_only + [_rec(1000 + i, LABELS[i % 2], "llm_verified") for i in range(100)]
    plan = plan_round(both, LABELS, cfg, beta=50, seen_upto=0, round_=2)
    assert plan.holdout_kind == "verified" and all(r.verified for r in plan.holdout)


def test_a_full_retrain_uses_every_trainable_row():
    cfg = FinetuneSettings(incremental=False)
    records = _stream(500)
    plan = plan_round(records, LABELS, cfg, beta=10, seen_upto=400, round_=3)
    rows = labelled_rows(records, LABELS, cfg)
    held = set(split_holdout([r.row_id for r in rows if r.verified], cfg)[1]) | set(
        split_holdout([r.row_id for r in rows if not r.verified], cfg, fraction=cfg.settled_holdout_fraction)[1])
    assert {r.row_id for r in plan.train} == {r.row_id for r in rows} - held and len(held) > 0
    assert plan.n_replay == 0 and plan.epochs == cfg.epochs


def test_the_guard_refuses_weights_that_forget_the_earliest_rows(tmp_path):
    """Better on the held-out slice (0 -> 1) but wrong on all of the earliest rows: refused."""
    cfg = FinetuneSettings(forgetting_margin=0.05)
    texts = ["x"] * 10
    truth_now, truth_early = np.zeros(10, dtype=np.int64), np.ones(10, dtype=np.int64)
    model = ConstantStudent(label_idx=1, learns=0)
    kept, rec = finetune_model(model, (texts, truth_now), (texts, truth_now), cfg, 3, tmp_path,
                               forgetting=(texts, truth_early))
    assert rec["holdout_balanced_acc_after"] == 1.0 and rec["forgetting_acc_before"] == 1.0
    assert rec["forgetting_acc_after"] == 0.0 and not rec["accepted"] and rec["rejected_for"] == "forgetting"
    assert kept is model and rec["weights"] is None
    kept, rec = finetune_model(model, (texts, truth_now), (texts, truth_now), FinetuneSettings(forgetting_margin=1.0),
                               3, tmp_path, forgetting=(texts, truth_early))
    assert rec["accepted"] and kept is not model  # a margin of 1 tolerates any loss


def test_the_summary_says_when_each_model_first_voted_and_what_rounds_cost():
    from autoannotator.finetune import finetune_summary

    recs = [{"model": "student", "round": 1, "accepted": True, "votes": False, "rows_labelled": 0, "seconds": 10.0},
            {"model": "tfidf", "round": 1, "accepted": True, "votes": True, "rows_labelled": 0, "seconds": 1.0},
            {"model": "student", "round": 2, "accepted": False, "votes": False, "rows_labelled": 300, "seconds": 12.0},
            {"model": "student", "round": 3, "accepted": True, "votes": True, "rows_labelled": 600, "seconds": 11.0}]
    s = finetune_summary(recs)
    assert s["student"] == {"rounds": 3, "rejected": 1, "first_vote_round": 3, "first_vote_rows_labelled": 600,
                            "first_round_seconds": 10.0, "last_round_seconds": 11.0, "last_over_first": 1.1,
                            "total_seconds": 33.0}
    assert s["tfidf"]["first_vote_round"] == 1 and s["tfidf"]["first_vote_rows_labelled"] == 0


def test_a_skewed_round_is_rebalanced_so_each_label_weighs_the_same():
    from autoannotator.finetune import LabelledRow, balance

    rows = [LabelledRow(i, 0, False, 1.0) for i in range(8)] + [LabelledRow(8 + i, 1, True, 1.0) for i in range(2)]
    out = balance(rows, cap=5.0)
    by_label = {y: sum(r.weight for r in out if r.label == y) for y in (0, 1)}
    assert by_label[0] == pytest.approx(by_label[1]) == pytest.approx(5.0)
    capped = balance(rows[:9], cap=2.0)  # 8 against 1: the lone row's factor stops at 2
    assert capped[-1].weight == 2.0 and [r.row_id for r in capped] == list(range(9))
    assert balance(rows[:8], cap=5.0) == rows[:8]  # one label: nothing to balance
    plan = plan_round([_rec(i, "a") for i in range(80)] + [_rec(100 + i, "b") for i in range(20)], LABELS,
                      FinetuneSettings(), beta=100, seen_upto=0, round_=1)
    assert plan.summary["label_shares"]["a"] > 0.7
    w = {y: sum(r.weight for r in plan.train if r.label == y) for y in (0, 1)}
    assert w[0] == pytest.approx(w[1], rel=1e-3)
    assert plan_round([_rec(i, "a") for i in range(10)] + [_rec(10, "b")], LABELS, FinetuneSettings(), beta=5,
                      seen_upto=0, round_=1, epochs=3).epochs == 3
