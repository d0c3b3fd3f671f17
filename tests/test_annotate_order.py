"""The annotation graph's row order, warm start and incremental rounds, on fake models."""

from __future__ import annotations

import numpy as np
import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from autoannotator.config import FinetuneSettings, Settings
from autoannotator.graphs.annotate import build_annotate_graph, processing_order
from graph_fakes import OracleVerifier
from test_annotate_graph import GOLD, TEXTS, _context, _initial

ORACLE = [g or "positive" for g in GOLD]


def test_processing_order_is_a_seeded_shuffle_that_resume_can_recompute():
    a, b = processing_order(1000, seed=3), processing_order(1000, seed=3)
    assert (a == b).all() and sorted(a.tolist()) == list(range(1000))
    assert not (a == np.arange(1000)).all() and not (a == processing_order(1000, seed=4)).all()
    assert (processing_order(10, seed=3, shuffle=False) == np.arange(10)).all()


def _by_batch(results: list[dict]) -> list[list[int]]:
    n = max(r["batch"] for r in results) + 1
    return [[r["row_id"] for r in results if r["batch"] == i] for i in range(n)]


def test_rows_are_labelled_in_shuffled_order_and_come_out_in_input_order(tmp_path):
    settings = Settings(batch_size=4, beta=100, seed=1)
    ctx = _context(tmp_path, OracleVerifier(ORACLE), [], settings)
    build_annotate_graph(ctx).invoke(_initial(len(TEXTS), settings), {"recursion_limit": 200})
    results = ctx.store.results()
    assert [r["row_id"] for r in results] == list(range(len(TEXTS)))
    order = processing_order(len(TEXTS), 1).tolist()
    assert [rid for batch in _by_batch(results) for rid in sorted(batch, key=order.index)] == order
    assert _by_batch(results)[0] != [0, 1, 2, 3]


def test_warm_start_trains_before_any_llm_call_so_the_student_votes_from_the_first_batch(tmp_path):
    # a 16-row toy: the settled slice is a couple of rows, so the gate needs no margin here
    settings = Settings(batch_size=4, beta=100, finetune=FinetuneSettings(
        rejoin_margin=0.0, rejoin_standard_errors=0.0, settled_holdout_fraction=0.3, min_holdout=2))
    verifier = OracleVerifier(ORACLE)
    ctx = _context(tmp_path, verifier, [], settings)
    asked_at_warm_start: list[int] = []
    ctx.on_progress = lambda e: asked_at_warm_start.append(len(verifier.asked)) if e["event"] == "finetune_done" else 0
    final = build_annotate_graph(ctx).invoke(_initial(len(TEXTS), settings), {"recursion_limit": 200})
    first = ctx.store.finetune_records()[0]
    assert first["kind"] == "warm_start" and first["round"] == 1 and asked_at_warm_start[0] == 0
    assert first["plan"]["n_verified_train"] == 0 and first["plan"]["holdout_kind"] == "settled"
    assert first["accepted"] and first["votes"] is True and final["finetune_round"] == 1
    batch0 = [r for r in ctx.store.results() if r["batch"] == 0 and r["label_source"] != "skipped_empty"]
    assert batch0 and all(r["votes"]["student"]["label"] is not None for r in batch0)


def test_no_warm_start_when_switched_off(tmp_path):
    settings = Settings(batch_size=4, beta=100, finetune=FinetuneSettings(warm_start=False))
    ctx = _context(tmp_path, OracleVerifier(ORACLE), [], settings)
    final = build_annotate_graph(ctx).invoke(_initial(len(TEXTS), settings), {"recursion_limit": 200})
    assert ctx.store.finetune_records() == [] and final.get("finetune_round", 0) == 0


def test_rounds_record_what_they_trained_on_and_the_forgetting_slice(tmp_path):
    # The paper's rule settles every agreement: the round then has settled rows to learn from.
    settings = Settings(batch_size=4, beta=2, routing="paper", finetune=FinetuneSettings(
        warm_start=False, rejoin_margin=0.0, rejoin_standard_errors=0.0, min_holdout=1, forgetting_rows=3))
    ctx = _context(tmp_path, OracleVerifier(ORACLE), [], settings)
    final = build_annotate_graph(ctx).invoke(_initial(len(TEXTS), settings), {"recursion_limit": 200})
    records = ctx.store.finetune_records()
    assert len(records) >= 2 and final["finetune_seen"] > 0
    first, later = records[0], records[-1]
    assert first["kind"] == "incremental" and first["plan"]["n_replay"] == 0
    assert first["plan"]["n_verified_train"] < first["n_train"]  # settled rows train too
    assert later["forgetting_n"] == 3 and later["forgetting_acc_before"] is not None
    assert later["plan"]["n_replay"] > 0  # earlier rows replayed


def test_resume_walks_the_same_order(tmp_path):
    settings = Settings(batch_size=4, beta=100, seed=2, finetune=FinetuneSettings(warm_start=False))
    (tmp_path / "a").mkdir()
    whole = _context(tmp_path / "a", OracleVerifier(ORACLE), [], settings)
    build_annotate_graph(whole).invoke(_initial(len(TEXTS), settings), {"recursion_limit": 200})
    (tmp_path / "b").mkdir()
    config = {"configurable": {"thread_id": "t"}, "recursion_limit": 200}
    with SqliteSaver.from_conn_string(str(tmp_path / "b" / "ck.sqlite")) as saver:
        ctx = _context(tmp_path / "b", OracleVerifier(ORACLE, crash_after=2), [], settings)
        with pytest.raises(KeyboardInterrupt):
            build_annotate_graph(ctx, checkpointer=saver).invoke(_initial(len(TEXTS), settings), config)
        ctx.store.close()
    with SqliteSaver.from_conn_string(str(tmp_path / "b" / "ck.sqlite")) as saver:
        ctx = _context(tmp_path / "b", OracleVerifier(ORACLE), [], settings)
        build_annotate_graph(ctx, checkpointer=saver).invoke(None, config)
    assert _by_batch(ctx.store.results()) == _by_batch(whole.store.results())
