"""The annotation graph end to end on fake models: routing, verification, the beta branch, checkpointed resume."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from autoannotator.config import FinetuneSettings, Settings
from autoannotator.data import Dataset
from autoannotator.graphs.annotate import AnnotateContext, build_annotate_graph
from autoannotator.run.store import RunStore
from autoannotator.task import LabelDef, TaskSpec
from graph_fakes import LABELS, KeywordSLM, MemoStudent, OracleVerifier

TEXTS = ["good one", "bad one", "good but tricky", "meh", "", "bad and tricky", "good again", "bad again",
         "so good", "so bad", "tricky good", "tricky bad", "good", "bad", "neutral text", "good good"]
GOLD = ["positive", "negative", "negative", "negative", None, "positive", "positive", "negative",
        "positive", "negative", "negative", "positive", "positive", "negative", "positive", "positive"]


def _dataset() -> Dataset:
    return Dataset(path=Path("mem.csv"), frame=pd.DataFrame({"text": TEXTS}), text_column="text", texts=TEXTS,
                   row_ids=list(range(len(TEXTS))), fingerprint="x", empty_rows=[4])


def _initial(n: int, settings: Settings) -> dict:
    return {"n_rows": n, "epsilon": settings.epsilon, "beta": settings.beta, "has_trainable": True, "cursor": 0,
            "batch_index": 0, "pool_size": 0, "pool_at_last_finetune": 0, "finetune_round": 0, "weights": {},
            "timings": {}}


def _context(tmp_path: Path, verifier, reports: list, settings: Settings):
    models = [KeywordSLM("a"), KeywordSLM("b", flip_on="tricky"), MemoStudent()]
    store = RunStore(tmp_path / "run.sqlite")
    task = TaskSpec(instruction="sentiment", labels=[LabelDef(name=n) for n in LABELS])
    return AnnotateContext(dataset=_dataset(), task=task, models=models, verifier=verifier, store=store,
                           settings=settings, run_dir=tmp_path, empty_rows={4},
                           on_progress=lambda e: reports.append(e) if e["event"] == "finished" else None)


def test_graph_routes_verifies_and_finetunes(tmp_path):
    # A one-row held-out slice: chance there is 1.0, so the vote gate needs a zero margin here.
    settings = Settings(batch_size=5, beta=3, routing="paper", audit=0,
                        finetune=FinetuneSettings(rejoin_margin=0.0, rejoin_standard_errors=0.0))
    verifier, reports = OracleVerifier([g or "positive" for g in GOLD]), []
    ctx = _context(tmp_path, verifier, reports, settings)
    graph = build_annotate_graph(ctx)
    final = graph.invoke(_initial(len(TEXTS), settings), {"recursion_limit": 200})

    results = ctx.store.results()
    assert [r["row_id"] for r in results] == list(range(len(TEXTS)))
    by_id = {r["row_id"]: r for r in results}
    # "meh" and "neutral text": every model abstains -> no consensus -> LLM; "tricky": a and b disagree -> LLM.
    for rid in (2, 3, 5):
        assert by_id[rid]["label_source"] == "llm_verified" and by_id[rid]["label"] == GOLD[rid]
    assert by_id[4]["label_source"] == "skipped_empty" and by_id[4]["label"] is None
    assert by_id[0] == {**by_id[0], "label": "positive", "label_source": "slm_consensus", "uncertainty": 0.0}
    assert 4 not in verifier.asked and len(verifier.asked) == len(set(verifier.asked))
    assert sorted(verifier.asked) == sorted(r["row_id"] for r in results if r["label_source"] == "llm_verified")
    assert ctx.store.pool_size() == len(verifier.asked)
    # beta = 3: the first batch alone sends 3 rows to the LLM, so the student is fine-tuned and rejoins.
    assert final["finetune_round"] >= 1 and ctx.store.finetune_records()[0]["accepted"]
    assert ctx.models[2].is_trained
    later = [r for r in results if r["batch"] >= 1 and r["label_source"] != "skipped_empty"]
    assert any(r["votes"]["student"]["label"] is not None for r in later)
    assert reports and final["finished"]
    assert set(final["timings"]) >= {"load_batch", "ensemble", "verify", "accept", "finetune", "report"}


def test_crash_then_resume_labels_every_row_once_and_never_reasks(tmp_path):
    settings = Settings(batch_size=4, beta=100, routing="paper", audit=0)
    config = {"configurable": {"thread_id": "t1"}, "recursion_limit": 200}
    first = OracleVerifier([g or "positive" for g in GOLD], crash_after=2)
    with SqliteSaver.from_conn_string(str(tmp_path / "ck.sqlite")) as saver:
        ctx = _context(tmp_path, first, [], settings)
        graph = build_annotate_graph(ctx, checkpointer=saver)
        with pytest.raises(KeyboardInterrupt):
            graph.invoke(_initial(len(TEXTS), settings), config)
        done_before = ctx.store.n_results()
        ctx.store.close()
    assert 0 < done_before < len(TEXTS)

    second, reports = OracleVerifier([g or "positive" for g in GOLD]), []
    with SqliteSaver.from_conn_string(str(tmp_path / "ck.sqlite")) as saver:
        ctx = _context(tmp_path, second, reports, settings)
        graph = build_annotate_graph(ctx, checkpointer=saver)
        assert graph.get_state(config).next  # there is somewhere to continue from
        graph.invoke(None, config)
    results = ctx.store.results()
    assert [r["row_id"] for r in results] == list(range(len(TEXTS)))
    finished_first = {r for r in first.asked}
    # the batch in flight at the crash is re-verified (its answers were never recorded by the graph);
    # rows of batches accepted before the crash are never asked again.
    accepted_before = {r["row_id"] for r in results if r["batch"] == 0}
    assert not (set(second.asked) & accepted_before & finished_first)
    assert len(reports) == 1
