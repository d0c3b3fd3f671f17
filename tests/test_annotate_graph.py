"""The annotation graph end to end on fake models: routing, verification, the beta branch, checkpointed resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from autoannotator.config import FinetuneSettings, Settings
from autoannotator.data import Dataset
from autoannotator.graphs.annotate import AnnotateContext, build_annotate_graph
from autoannotator.run.report import _decision_markdown
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


class GrowingStudent(MemoStudent):
    """A MemoStudent whose vote grows surer with every round: which round's weights cast a vote shows in its p."""

    def native_proba(self, texts):
        out = super().native_proba(texts)
        if not self.is_trained:
            return out
        p = 1.0 - 0.5 / (self.rounds + 1)
        return np.where(np.isnan(out), out, np.where(out == 1.0, p, 1.0 - p)).astype(np.float32)


def _growing_context(tmp_path: Path, final_revote: bool, n: int = 60) -> AnnotateContext:
    # every fifth row splits the keyword models: asked all run long, so rounds keep coming
    texts = [("good " if i % 2 else "bad ") + ("tricky " if i % 5 == 0 else "") + str(i) for i in range(n)]
    gold = ["positive" if i % 2 else "negative" for i in range(n)]
    dataset = Dataset(path=Path("mem.csv"), frame=pd.DataFrame({"text": texts}), text_column="text", texts=texts,
                      row_ids=list(range(n)), fingerprint="g", empty_rows=[])
    settings = Settings(batch_size=6, beta=3, routing="calibrated", audit=0, final_revote=final_revote,
                        finetune=FinetuneSettings(rejoin_margin=0.0, rejoin_standard_errors=0.0, warm_start=False))
    models = [KeywordSLM("a"), KeywordSLM("b", flip_on="tricky"), GrowingStudent()]
    task = TaskSpec(instruction="sentiment", labels=[LabelDef(name=x) for x in LABELS])
    tmp_path.mkdir(parents=True, exist_ok=True)
    return AnnotateContext(dataset=dataset, task=task, models=models, verifier=OracleVerifier(gold),
                           store=RunStore(tmp_path / "run.sqlite"), settings=settings, run_dir=tmp_path)


GROWING_CONFIG = {"configurable": {"thread_id": "g"}, "recursion_limit": 500}


def _growing_run(tmp_path: Path, final_revote: bool, n: int = 60, checkpointer=None, crash_in_revote=False):
    ctx = _growing_context(tmp_path, final_revote, n)
    if crash_in_revote:  # the re-vote's votes are stored, the labels not yet relabelled: then a crash
        store_votes = ctx.store.update_votes

        def crash(votes):
            store_votes(votes)
            raise KeyboardInterrupt("simulated crash")

        ctx.store.update_votes = crash
    final = build_annotate_graph(ctx, checkpointer=checkpointer).invoke(_initial(n, ctx.settings), GROWING_CONFIG)
    return ctx, final


def _resume_growing(tmp_path: Path, checkpointer):
    """As the runner resumes: a new process's models, the student's kept weights loaded, the graph continued."""
    ctx = _growing_context(tmp_path, True)
    graph = build_annotate_graph(ctx, checkpointer=checkpointer)
    saved = graph.get_state(GROWING_CONFIG)
    assert saved.next == ("revote",)  # stopped inside the re-vote, its votes stored
    ctx.models[2].load(Path(saved.values["weights"]["student"]))
    return ctx, graph.invoke(None, GROWING_CONFIG)


@pytest.mark.parametrize("final_revote", [True, False])
def test_final_revote_gives_early_settled_rows_the_final_students_vote(tmp_path, final_revote):
    ctx, final = _growing_run(tmp_path, final_revote)
    student = ctx.models[2]
    p_final = round(1.0 - 0.5 / (student.rounds + 1), 4)
    upto = final["weights_from_batch"]
    early = [r for r in ctx.store.results() if r["label_source"] == "slm_consensus" and r["batch"] < upto]
    assert early, "no row was settled before the last round: the test proves nothing"
    revoted = final["decide_summary"]["final_revote"]["rows"]
    if final_revote:
        assert revoted == len(early)
        assert all(r["votes"]["student"]["p"] == pytest.approx(p_final) for r in early)
    else:
        assert revoted == 0
        assert any(r["votes"]["student"]["p"] != pytest.approx(p_final) for r in early)
    assert all(r["label"] == ("positive" if r["row_id"] % 2 else "negative") for r in ctx.store.results())


def test_a_crash_in_the_revote_resumes_to_the_uninterrupted_labels(tmp_path):
    ctx, _ = _growing_run(tmp_path / "whole", True)
    want = {r["row_id"]: (r["label"], r["label_source"], r["confidence"], r["votes"]) for r in ctx.store.results()}
    (tmp_path / "cut").mkdir()
    with SqliteSaver.from_conn_string(str(tmp_path / "cut" / "ck.sqlite")) as saver:
        with pytest.raises(KeyboardInterrupt):
            _growing_run(tmp_path / "cut", True, checkpointer=saver, crash_in_revote=True)
    with SqliteSaver.from_conn_string(str(tmp_path / "cut" / "ck.sqlite")) as saver:
        ctx, final = _resume_growing(tmp_path / "cut", saver)
    got = {r["row_id"]: (r["label"], r["label_source"], r["confidence"], r["votes"]) for r in ctx.store.results()}
    assert final["finished"] and got == want


RESERVE_ROWS = 300
RESERVE_CONFIG = {"configurable": {"thread_id": "r"}, "recursion_limit": 3000}


def _reserve_context(tmp_path: Path, n: int = RESERVE_ROWS) -> AnnotateContext:
    """The default paper cap with a reserve; the audit feeds the LLM verdict the cap waits for. A third of the rows'
    true labels contradict their keyword, so the agreeing keyword models are no sure thing and asking helps on
    most rows: the cap binds."""
    ctx = _growing_context(tmp_path, True, n)
    ctx.settings = ctx.settings.model_copy(update={"final_reserve": 0.4, "audit": 40})
    keyword = ["positive" if i % 2 else "negative" for i in range(n)]
    ctx.verifier = OracleVerifier([(LABELS[0] if k == LABELS[1] else LABELS[1]) if i % 3 == 0 else k
                                   for i, k in enumerate(keyword)])
    return ctx


def test_the_reserve_is_spent_after_the_revote_on_settled_rows_within_the_paper_cap(tmp_path):
    ctx = _reserve_context(tmp_path)
    final = build_annotate_graph(ctx).invoke(_initial(RESERVE_ROWS, ctx.settings), RESERVE_CONFIG)
    summary = final["decide_summary"]
    asked = ctx.verifier.asked
    topped, reused = summary["top_up"]["rows"], summary["top_up"]["audited_reused"]
    calls = summary["budget"]["calls"]  # routed and topped up; the audit's are counted apart
    # every row asked once: the routed and topped-up ones, and the audit's (those still in it and those the
    # top-up chose, labelled by the answer the audit had paid for, not asked again)
    assert topped > 0 and reused > 0 and len(asked) == len(set(asked)) == calls + summary["audit"]["rows"] + reused
    assert calls <= summary["paper_cap"]["share"] * RESERVE_ROWS  # within the paper cap, every row asked once
    late = asked[-topped:]  # the top-up's rows: asked after every batch, recorded as LLM rows now
    by_id = {r["row_id"]: r for r in ctx.store.results()}
    assert all(by_id[r]["label_source"] in ("llm_verified", "llm_overruled") and by_id[r]["llm_label"] for r in late)
    assert {r for r, _ in ctx.store.pool()} >= set(late)
    settled = [r for r in by_id.values() if r["label_source"] == "slm_consensus"]
    assert settled and all(r["llm_label"] is None or r["audit"] for r in settled)
    taken = [r for r in by_id.values() if r["audit"] and r["label_source"] != "slm_consensus"]
    assert len(taken) == reused and all(r["label_source"] in ("llm_verified", "llm_overruled") for r in taken)
    assert sum(r["audit"] and r["label_source"] == "slm_consensus" for r in by_id.values()) == summary["audit"]["rows"]
    lines = "\n".join(_decision_markdown({"decision": summary}))
    assert f"- Top-up: {topped} settled rows" in lines and f"; {reused} audited rows as unsure as those" in lines


def test_rows_whose_answer_failed_stay_llm_failed_through_the_finishing_steps(tmp_path, monkeypatch):
    """Asked, no valid label: llm_failed, so `runs retry-failed` finds the row, also after the final relabel and
    when the top-up asked it. A failed audit answer leaves an ordinary settled row; only audit answers in hand
    are reused by the top-up."""
    from autoannotator.decide.online import OnlineDecider

    audit_ids: set[int] = set()
    plan = OnlineDecider.plan

    def recording_plan(self, *args, **kwargs):
        out = plan(self, *args, **kwargs)
        audit_ids.update(out.audit)
        return out

    monkeypatch.setattr(OnlineDecider, "plan", recording_plan)
    ctx = _reserve_context(tmp_path)
    ctx.verifier.fail_first = set(range(0, RESERVE_ROWS, 2))  # every other row's first answer fails
    final = build_annotate_graph(ctx).invoke(_initial(RESERVE_ROWS, ctx.settings), RESERVE_CONFIG)
    top = final["decide_summary"]["top_up"]
    rows = {r["row_id"]: r for r in ctx.store.results()}
    asked = ctx.verifier.asked
    failed = {r for r in set(asked) if r in ctx.verifier.fail_first and asked.count(r) == 1} - audit_ids
    got = {r for r, rec in rows.items() if rec["label_source"] == "llm_failed"}
    assert failed and got == failed
    top_up_asked = set(asked[-top["rows"]:])
    assert got & top_up_asked  # some of them failed in the top-up
    assert all(rows[r]["label"] is not None for r in got)  # they keep a label
    audited = [r for r in rows.values() if r["audit"]]
    assert audited and all(r["llm_label"] for r in audited)
    assert top["audited_reused"] == sum(r["label_source"] != "slm_consensus" for r in audited)


@pytest.mark.parametrize("crash_after", ["failures marked", "answers stored", "relabelled"])
def test_a_crash_in_the_top_up_resumes_asking_the_rows_it_chose(tmp_path, crash_after):
    fails = set(range(0, RESERVE_ROWS, 2))  # every other row's first answer fails, in both runs
    whole = _reserve_context(tmp_path / "whole")
    whole.verifier.fail_first = fails
    whole_summary = build_annotate_graph(whole).invoke(_initial(RESERVE_ROWS, whole.settings),
                                                       RESERVE_CONFIG)["decide_summary"]
    want = {r["row_id"]: (r["label"], r["label_source"], r["llm_label"]) for r in whole.store.results()}
    (tmp_path / "cut").mkdir()
    ctx = _reserve_context(tmp_path / "cut")
    ctx.verifier.fail_first = fails
    store_labels, store_decisions = ctx.store.set_llm_labels, ctx.store.update_decisions
    answered = []

    def stored_answers(answers):  # the answers are stored, the labels not yet relabelled: a crash, or on
        store_labels(answers)
        answered.append(True)
        if crash_after == "answers stored":
            raise KeyboardInterrupt("simulated crash")

    def stored_decisions(decisions):  # the failed rows marked, or the relabel stored (reused audit rows out of
        store_decisions(decisions)     # the audit): a crash
        marking = any(src == "llm_failed" for _, _, src, _ in decisions)
        if (crash_after == "failures marked" and marking) or (crash_after == "relabelled" and answered):
            raise KeyboardInterrupt("simulated crash")

    ctx.store.set_llm_labels, ctx.store.update_decisions = stored_answers, stored_decisions
    with SqliteSaver.from_conn_string(str(tmp_path / "cut" / "ck.sqlite")) as saver:
        with pytest.raises(KeyboardInterrupt):
            build_annotate_graph(ctx, checkpointer=saver).invoke(_initial(RESERVE_ROWS, ctx.settings), RESERVE_CONFIG)
    with SqliteSaver.from_conn_string(str(tmp_path / "cut" / "ck.sqlite")) as saver:
        again = _reserve_context(tmp_path / "cut")
        graph = build_annotate_graph(again, checkpointer=saver)
        saved = graph.get_state(RESERVE_CONFIG)
        assert saved.next == ("top_up",)
        again.models[2].load(Path(saved.values["weights"]["student"]))
        final = graph.invoke(None, RESERVE_CONFIG)
    audited = {r["row_id"] for r in again.store.results() if r["audit"]}
    failed = {r["row_id"] for r in again.store.results() if r["label_source"] == "llm_failed"}
    assert audited & set(saved.values["top_up"])  # some chosen rows are reused audit rows: not asked again
    assert failed & set(saved.values["top_up"])  # and some failed in the top-up: not asked again either
    # the same rows, no others (what was answered before the crash comes from the verifier's cache in a real run)
    assert sorted(again.verifier.asked) == sorted(set(saved.values["top_up"]) - audited - failed)
    got = {r["row_id"]: (r["label"], r["label_source"], r["llm_label"]) for r in again.store.results()}
    assert final["finished"] and got == want
    assert final["decide_summary"]["audit"] == whole_summary["audit"]
    assert final["decide_summary"]["top_up"] == whole_summary["top_up"]


def test_an_accuracy_target_asks_fewer_rows_and_the_report_says_what_the_posterior_expects(tmp_path):
    plain = _reserve_context(tmp_path / "plain")
    untargeted = build_annotate_graph(plain).invoke(_initial(RESERVE_ROWS, plain.settings), RESERVE_CONFIG)
    ctx = _reserve_context(tmp_path / "target")
    ctx.settings = ctx.settings.model_copy(update={"target_accuracy": 0.65})
    final = build_annotate_graph(ctx).invoke(_initial(RESERVE_ROWS, ctx.settings), RESERVE_CONFIG)
    summary, target = final["decide_summary"], final["decide_summary"]["target"]
    assert untargeted["decide_summary"]["target"] is None
    assert summary["budget"]["calls"] < untargeted["decide_summary"]["budget"]["calls"]
    assert target["accuracy"] == 0.65 and target["spared"] > 0 and summary["expected_accuracy"] >= 0.64
    # without a target the expectation is reported too, and asking more made it no lower
    assert untargeted["decide_summary"]["expected_accuracy"] >= summary["expected_accuracy"]
    lines = "\n".join(_decision_markdown({"decision": summary}))
    assert f"Accuracy target: 0.65; {target['spared']} rows" in lines
    assert f"- Expected accuracy: {summary['expected_accuracy']}, the final posterior's mean confidence" in lines
