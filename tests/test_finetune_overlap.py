"""Fine-tuning overlapped with labelling (finetune.overlap): the round trains in a thread, the loop labels
on with the current weights, the kept weights come in at a batch boundary; a crash mid-round reruns it."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from autoannotator.config import FinetuneSettings, Settings
from autoannotator.data import Dataset
from autoannotator.graphs.annotate import AnnotateContext, build_annotate_graph
from autoannotator.graphs.routing import should_finetune
from autoannotator.run.store import RunStore
from autoannotator.task import LabelDef, TaskSpec
from graph_fakes import LABELS, KeywordSLM, MemoStudent, OracleVerifier

# Batches of 4: batch 0 sends rows 2 and 3 to the LLM, batch 1 row 5, so with beta = 3 the round
# starts after batch 1 (launch_batch 2); batches 2 and 3 follow.
TEXTS = ["good one", "bad one", "good but tricky", "meh", "", "bad and tricky", "good again", "bad again",
         "so good", "so bad", "tricky good", "tricky bad", "good", "bad", "neutral text", "good good"]
GOLD = ["positive", "negative", "negative", "negative", "positive", "positive", "positive", "negative",
        "positive", "negative", "negative", "positive", "positive", "negative", "positive", "positive"]


def _settings(**finetune) -> Settings:
    # No warm start: the student abstains until the beta round, so its votes show which weights labelled a
    # batch. File order and no held-out slices (16 rows are too few to judge on): every accepted round votes.
    return Settings(batch_size=4, beta=3, routing="paper", audit=0,
                    finetune=FinetuneSettings(warm_start=False, shuffle_rows=False, holdout_fraction=0.0,
                                              settled_holdout_fraction=0.0, **finetune))


def _initial(settings: Settings) -> dict:
    return {"n_rows": len(TEXTS), "epsilon": settings.epsilon, "beta": settings.beta, "has_trainable": True,
            "cursor": 0, "batch_index": 0, "pool_size": 0, "pool_at_last_finetune": 0, "finetune_round": 0,
            "weights": {}, "timings": {}}


def _context(tmp_path: Path, verifier, settings: Settings, student=None, on_progress=lambda e: None):
    frame = pd.DataFrame({"text": TEXTS})
    dataset = Dataset(path=Path("mem.csv"), frame=frame, text_column="text", texts=TEXTS,
                      row_ids=list(range(len(TEXTS))), fingerprint="x", empty_rows=[4])
    task = TaskSpec(instruction="sentiment", labels=[LabelDef(name=n) for n in LABELS])
    return AnnotateContext(dataset=dataset, task=task,
                           models=[KeywordSLM("a"), KeywordSLM("b", flip_on="tricky"), student or MemoStudent()],
                           verifier=verifier, store=RunStore(tmp_path / "run.sqlite"), settings=settings,
                           run_dir=tmp_path, empty_rows={4}, on_progress=on_progress)


def _student_voted(ctx) -> dict[int, bool]:
    """Batch -> whether the student voted on any of its rows (it abstains until its weights are swapped in)."""
    out: dict[int, bool] = {}
    for r in ctx.store.results():
        if r["label_source"] != "skipped_empty":
            out[r["batch"]] = out.get(r["batch"], False) or r["votes"]["student"]["label"] is not None
    return out


def _run(tmp_path: Path, settings: Settings):
    ctx = _context(tmp_path, OracleVerifier(GOLD), settings)
    final = build_annotate_graph(ctx).invoke(_initial(settings), {"recursion_limit": 200})
    return ctx, final


def test_in_line_the_next_batch_already_has_the_new_weights(tmp_path):
    ctx, final = _run(tmp_path, _settings())
    assert _student_voted(ctx) == {0: False, 1: False, 2: True, 3: True}
    assert "overlap" not in ctx.store.finetune_records()[0]


def test_overlapped_the_batches_labelled_during_the_round_keep_the_old_weights(tmp_path):
    ctx, final = _run(tmp_path, _settings(overlap=True, overlap_batches=1))
    # Batch 2 was labelled while round 1 trained (the student still abstaining); its weights came in before batch 3.
    assert _student_voted(ctx) == {0: False, 1: False, 2: False, 3: True}
    record = ctx.store.finetune_records()[0]
    assert record["accepted"] and record["round"] == 1
    assert record["overlap"]["launch_batch"] == 2 and record["overlap"]["swap_batch"] == 3
    assert record["overlap"]["batches_overlapped"] == 1
    # Batches 2 and 3 bring 3 more LLM answers: round 2 starts after the last batch, and the end waits for it.
    last = ctx.store.finetune_records()[-1]
    assert last["round"] == 2 and last["overlap"]["launch_batch"] == last["overlap"]["swap_batch"] == 4
    assert final["finetune_pending"] is None and final["weights"]["student"] == last["weights"]
    assert ctx.models[2].is_trained and "finetune_wait" in final["timings"]
    assert [r["row_id"] for r in ctx.store.results()] == list(range(len(TEXTS)))


def test_rounds_never_stack_up_while_one_is_in_flight():
    assert should_finetune(10, 0, 3, True) and not should_finetune(10, 0, 3, True, pending=True)


class GatedStudent(MemoStudent):
    """Training waits until the test opens the gate: proof that labelling goes on meanwhile."""

    def __init__(self, gate: threading.Event):
        super().__init__()
        self.gate = gate

    def clone(self):
        twin = GatedStudent(self.gate)
        twin.memory, twin.rounds = dict(self.memory), self.rounds
        return twin

    def train_on(self, texts, labels, cfg, **kwargs):
        if not self.gate.wait(timeout=20):
            raise TimeoutError("the loop never labelled a batch while the round trained")
        return super().train_on(texts, labels, cfg, **kwargs)


def test_labelling_goes_on_while_the_round_trains_and_the_weights_come_in_when_it_ends(tmp_path):
    gate, accepted_batches = threading.Event(), []

    def on_progress(event: dict) -> None:
        if event["event"] == "accepted":
            accepted_batches.append(event)
            if len(accepted_batches) == 3:  # batch 2 was labelled while the round waited at the gate
                gate.set()

    settings = _settings(overlap=True)  # overlap_batches None: the first boundary after the round ends
    ctx = _context(tmp_path, OracleVerifier(GOLD), settings, student=GatedStudent(gate), on_progress=on_progress)
    final = build_annotate_graph(ctx).invoke(_initial(settings), {"recursion_limit": 200})
    record = ctx.store.finetune_records()[0]
    assert record["accepted"] and record["overlap"]["swap_batch"] >= 3  # at a boundary after batch 2, or at the end
    assert _student_voted(ctx)[2] is False
    assert final["finished"] and final["finetune_pending"] is None and ctx.models[2].is_trained
    assert [r["row_id"] for r in ctx.store.results()] == list(range(len(TEXTS)))


def _stale_rounds_end() -> None:
    """A crash kills the process and its round thread with it; in a test the thread lives on, so let it end."""
    for t in threading.enumerate():
        if t.name.startswith("finetune-round-"):
            t.join(timeout=20)


def test_a_crash_mid_round_reruns_it_on_resume_and_labels_as_an_uninterrupted_run(tmp_path):
    settings = _settings(overlap=True, overlap_batches=1)
    (tmp_path / "ref").mkdir()
    reference, _ = _run(tmp_path / "ref", settings)
    expected = {r["row_id"]: (r["label"], r["label_source"], r["votes"]["student"]["label"])
                for r in reference.store.results()}

    config = {"configurable": {"thread_id": "t1"}, "recursion_limit": 200}
    # Calls 1-3 are batches 0 and 1 (rows 2, 3, 5); the round starts; batch 2 asks row 10, then the crash.
    first = OracleVerifier(GOLD, crash_after=4)
    (tmp_path / "run").mkdir()
    with SqliteSaver.from_conn_string(str(tmp_path / "run" / "ck.sqlite")) as saver:
        ctx = _context(tmp_path / "run", first, settings)
        graph = build_annotate_graph(ctx, checkpointer=saver)
        with pytest.raises(KeyboardInterrupt):
            graph.invoke(_initial(settings), config)
        assert graph.get_state(config).values["finetune_pending"]["round"] == 1  # the crash caught it in flight
        assert not ctx.store.finetune_records()  # its record is written only when its weights come in
        ctx.store.close()
    _stale_rounds_end()

    second = OracleVerifier(GOLD)
    with SqliteSaver.from_conn_string(str(tmp_path / "run" / "ck.sqlite")) as saver:
        ctx = _context(tmp_path / "run", second, settings)  # a fresh, untrained student, as after a restart
        graph = build_annotate_graph(ctx, checkpointer=saver)
        final = graph.invoke(None, config)
    results = ctx.store.results()
    assert [r["row_id"] for r in results] == list(range(len(TEXTS)))
    # Rows of batches accepted before the crash are not asked again; only the batch in flight is redone.
    assert not set(second.asked) & {2, 3, 5}
    records = ctx.store.finetune_records()
    assert [r["round"] for r in records] == [1, 2] and records[0]["accepted"]
    assert records[0]["overlap"]["swap_batch"] == 3
    assert final["finetune_pending"] is None and ctx.models[2].is_trained
    assert {r["row_id"]: (r["label"], r["label_source"], r["votes"]["student"]["label"]) for r in results} == expected


def test_a_resumed_run_is_told_which_round_was_in_flight(tmp_path):
    from autoannotator.run.plan import resume_inputs

    store = RunStore(tmp_path / "run.sqlite")
    pending = {"round": 2, "launch_batch": 5, "seen_upto": 100}
    inputs = resume_inputs({"finetune_pending": pending, "finetune_round": 2, "cursor": 400}, store, 1000)
    assert inputs["finetune_pending"] == pending and inputs["cursor"] == 0  # the store, not the checkpoint, says where
    store.close()
