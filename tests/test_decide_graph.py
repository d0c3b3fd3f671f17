"""The decision layer inside the annotation graph: calibrated labels, confidence, audit, budget, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from autoannotator.config import Settings
from autoannotator.data import Dataset
from autoannotator.graphs.annotate import AnnotateContext, build_annotate_graph
from autoannotator.run.store import RunStore
from autoannotator.task import LabelDef, TaskSpec
from graph_fakes import LABELS, KeywordSLM, OracleVerifier

N = 240
BINS = 2


def _data(seed: int = 0) -> tuple[list[str], list[str]]:
    """Keyword texts the two SLMs read alike; one in eight is 'tricky' (b flips) or has no keyword."""
    rng = np.random.default_rng(seed)
    texts, gold = [], []
    for i in range(N):
        g = "positive" if rng.random() < 0.5 else "negative"
        word = "good" if g == "positive" else "bad"
        kind = rng.random()
        texts.append(f"{word} tricky {i}" if kind < 0.12 else f"plain {i}" if kind < 0.25 else f"{word} {i}")
        gold.append(g)
    return texts, gold


def _context(tmp_path: Path, texts: list[str], verifier, settings: Settings, events: list) -> AnnotateContext:
    ds = Dataset(path=Path("mem.csv"), frame=pd.DataFrame({"text": texts}), text_column="text", texts=texts,
                 row_ids=list(range(len(texts))), fingerprint="x", empty_rows=[])
    task = TaskSpec(instruction="sentiment", labels=[LabelDef(name=n) for n in LABELS])
    return AnnotateContext(dataset=ds, task=task, models=[KeywordSLM("a"), KeywordSLM("b", flip_on="tricky")],
                           verifier=verifier, store=RunStore(tmp_path / "run.sqlite"), settings=settings,
                           run_dir=tmp_path, on_progress=events.append)


def _initial(settings: Settings) -> dict:
    return {"n_rows": N, "epsilon": settings.epsilon, "beta": settings.beta, "has_trainable": False, "cursor": 0,
            "batch_index": 0, "pool_size": 0, "pool_at_last_finetune": 0, "finetune_round": 0, "weights": {},
            "timings": {}}


def test_calibrated_run_records_confidence_audit_and_summary(tmp_path):
    texts, gold = _data()
    settings = Settings(batch_size=20, beta=10**9, routing="calibrated", audit=12)
    verifier, events = OracleVerifier(gold), []
    ctx = _context(tmp_path, texts, verifier, settings, events)
    final = build_annotate_graph(ctx).invoke(_initial(settings), {"recursion_limit": 400})
    results = ctx.store.results()
    assert [r["row_id"] for r in results] == list(range(N))
    assert all(r["confidence"] is not None and 0.5 <= r["confidence"] <= 1.0 for r in results)
    audited = [r for r in results if r["audit"]]
    assert 6 <= len(audited) <= 12
    assert all(r["label_source"] == "slm_consensus" and r["llm_label"] is not None for r in audited)
    asked = [r for r in results if r["label_source"] in ("llm_verified", "llm_overruled")]
    assert sorted(verifier.asked) == sorted(r["row_id"] for r in asked + audited)
    # the oracle is right: labels follow it where asked; no-keyword rows go to it, plain agreement does not always
    assert all(r["label"] == gold[r["row_id"]] for r in asked)
    assert any(texts[r["row_id"]].startswith("plain") for r in asked)
    assert ctx.store.pool_size() == len(asked)  # audit answers do not join the training pool
    summary = final["decide_summary"]
    assert summary["routing"] == "calibrated" and summary["audit"]["rows"] == len(audited)
    assert summary["audit"]["usage"]["calls"] == len(audited)
    assert not summary["llm_verdict"]["unreliable"]
    assert set(summary["reliability"]) == {"a", "b", "llm"}
    accuracy = np.mean([r["label"] == g for r, g in zip(results, gold)])
    assert accuracy > 0.95


def test_constant_llm_is_named_unreliable_early_and_does_no_harm(tmp_path):
    texts, gold = _data(1)
    settings = Settings(batch_size=20, beta=10**9, routing="calibrated", audit=12)
    events = []
    ctx = _context(tmp_path, texts, OracleVerifier(["positive"] * N), settings, events)
    final = build_annotate_graph(ctx).invoke(_initial(settings), {"recursion_limit": 400})
    notes = [e for e in events if e.get("event") == "note" and "unreliable" in e["text"]]
    assert len(notes) == 1
    first_accept = next(i for i, e in enumerate(events) if e.get("event") == "accepted")
    assert events.index(notes[0]) < first_accept + 8  # within the first batches, not at the end
    results = ctx.store.results()
    keyword_rows = [r for r in results if not texts[r["row_id"]].startswith("plain")]
    # where the SLMs read a keyword, the constant LLM did not overwrite them
    assert np.mean([r["label"] == gold[r["row_id"]] for r in keyword_rows]) > 0.85
    assert final["decide_summary"]["llm_verdict"]["unreliable"]


def test_budget_and_crash_resume(tmp_path):
    texts, gold = _data(2)
    settings = Settings(batch_size=20, beta=10**9, routing="calibrated", audit=8, llm_budget=0.1)
    config = {"configurable": {"thread_id": "t"}, "recursion_limit": 400}
    first = OracleVerifier(gold, crash_after=14)
    with SqliteSaver.from_conn_string(str(tmp_path / "ck.sqlite")) as saver:
        ctx = _context(tmp_path, texts, first, settings, [])
        with pytest.raises(KeyboardInterrupt):
            build_annotate_graph(ctx, checkpointer=saver).invoke(_initial(settings), config)
        ctx.store.close()
    second = OracleVerifier(gold)
    with SqliteSaver.from_conn_string(str(tmp_path / "ck.sqlite")) as saver:
        ctx = _context(tmp_path, texts, second, settings, [])
        graph = build_annotate_graph(ctx, checkpointer=saver)
        graph.invoke(None, config)
        final = graph.get_state(config).values
    results = ctx.store.results()
    assert [r["row_id"] for r in results] == list(range(N))
    routed = [r for r in results if r["label_source"] in ("llm_verified", "llm_overruled")]
    assert len(routed) <= 0.1 * N  # the budget held across the crash
    assert final["decide_summary"]["budget"]["calls"] == len(routed)


def test_report_shows_decisions_and_prices_the_audit_apart():
    from autoannotator.costs import LLMUsage
    from autoannotator.run.report import build_report, render_markdown

    decide = {"routing": "calibrated", "llm_accuracy_assumed": 0.9, "margin": 0.02,
              "budget": {"llm_budget_share": 0.1, "max_llm_cost_usd": None, "calls": 9, "share_spent": 0.09,
                         "cost_spent_usd": 0.001},
              "reliability": {"a": {"accuracy": 0.8, "n_votes": 90.0, "accuracy_interval": [0.7, 0.87],
                                    "confusion": [[0.8, 0.2], [0.2, 0.8]], "posterior_accuracy": 0.74,
                                    "posterior_votes": 90},
                              "llm": {"accuracy": 0.59, "n_votes": 40.0, "accuracy_interval": [0.5, 0.7],
                                      "confusion": [[0.6, 0.4], [0.4, 0.6]], "posterior_accuracy": None,
                                      "assumed_accuracy": 0.9}},
              "llm_verdict": {"unreliable": True, "n": 40, "agreement": 0.5, "independent_agreement": 0.5,
                              "llm_accuracy": 0.55, "llm_interval": [0.4, 0.7], "slm_consensus_accuracy": 0.9,
                              "expected_agreement": 0.7},
              "audit": {"target": 5, "rows": 5, "usage": {"calls": 5, "tokens_in": 500, "tokens_out": 40,
                                                          "cost_usd": 0.0003},
                        "estimates": {"slm_consensus": {"n": 5, "agree": 4, "agreement": 0.8, "llm_accuracy": 0.9,
                                                        "estimate": 0.875, "interval": [0.4, 1.0]}}}}
    results = [{"row_id": i, "label": "positive", "label_source": "slm_consensus", "votes": {"a": {"label": "positive"}},
                "confidence": 0.9} for i in range(100)]
    report = build_report(run={"run_id": "r"}, results=results, usage=LLMUsage(calls=14, tokens_in=1400, tokens_out=112),
                          settings=Settings(), models=[{"name": "a", "kind": "x", "trainable": False}],
                          finetune_records=[], timings={}, gold=None, labels=LABELS, llm={"model_id": "m"},
                          warnings=[], decide=decide)
    assert report["llm_calls"] == 9 and report["audit_llm_calls"] == 5  # 14 calls: 9 routed + 5 audit
    assert report["llm_tokens_in"] == 900
    assert report["warnings"][0].startswith("LLM judged unreliable")
    md = render_markdown(report)
    assert "## Decisions" in md and "UNRELIABLE" in md and "| slm_consensus | 5 | 0.8 | 0.875 | 0.4–1.0 | – |" in md
    assert "- LLM budget: share 0.1;" in md
    assert "| a | 0.74 | 0.8 | 0.7–0.87 | 90.0 |" in md and "| llm | 0.9 (assumed) | 0.59 | 0.5–0.7 | 40.0 |" in md
    # no budget of the user's: the default cap is named with what it held back
    decide["budget"]["llm_budget_share"] = None
    decide["paper_cap"] = {"applied": True, "share": 0.43, "held_back": 512}
    decide["final_revote"] = {"rows": 37}
    report = build_report(run={"run_id": "r"}, results=results, usage=LLMUsage(calls=14, tokens_in=1400, tokens_out=112),
                          settings=Settings(), models=[{"name": "a", "kind": "x", "trainable": False}],
                          finetune_records=[], timings={}, gold=None, labels=LABELS, llm={"model_id": "m"},
                          warnings=[], decide=decide)
    md = render_markdown(report)
    assert "at most the paper rule's share of rows (43.0%, the default; the audit apart)" in md
    assert "- Final re-vote: 37 rows settled before the last fine-tuning round" in md
    assert "the cap kept 512 rows from the LLM" in md and "--llm-budget 1 lifts it" in md


class _ShadedKeywordSLM(KeywordSLM):
    """A keyword voter whose probability varies by row (0.55-0.99, from the row number): the
    decision layer's confidence bins see a spread of confidences, as with real models."""

    def native_proba(self, texts):
        out = super().native_proba(texts)
        for i, t in enumerate(texts):
            col = int(out[i].argmax())
            if col < 2:
                p = 0.55 + 0.44 * ((int(t.split()[-1]) * 37) % 100) / 100
                out[i] = (1 - p) / 2
                out[i, col] = p
        return out


def test_confidences_are_stored_and_a_crashed_run_resumes_to_the_same_labels(tmp_path):
    """The voters' confidences reach the decision layer in the store: a run stopped after a few LLM
    calls and resumed (the layer rebuilt from the store) labels every row as an uninterrupted run."""
    texts, gold = _data(3)
    settings = Settings(batch_size=20, beta=10**9, routing="calibrated", audit=8, confidence_bins=BINS)

    def ctx_for(path: Path, verifier) -> AnnotateContext:
        ctx = _context(path, texts, verifier, settings, [])
        ctx.models = [_ShadedKeywordSLM("a"), _ShadedKeywordSLM("b", flip_on="tricky")]
        return ctx

    (tmp_path / "once").mkdir()
    whole = ctx_for(tmp_path / "once", OracleVerifier(gold))
    build_annotate_graph(whole).invoke(_initial(settings), {"recursion_limit": 400})
    expected = {r["row_id"]: (r["label"], r["label_source"], r["confidence"]) for r in whole.store.results()}
    stored = whole.store.results()[0]["votes"]
    assert {m: v["p"] for m, v in stored.items()} and all(0.5 < v["p"] < 1 for v in stored.values() if v["label"])

    config = {"configurable": {"thread_id": "t"}, "recursion_limit": 400}
    (tmp_path / "crash").mkdir()
    with SqliteSaver.from_conn_string(str(tmp_path / "ck.sqlite")) as saver:
        ctx = ctx_for(tmp_path / "crash", OracleVerifier(gold, crash_after=30))
        with pytest.raises(KeyboardInterrupt):
            build_annotate_graph(ctx, checkpointer=saver).invoke(_initial(settings), config)
        ctx.store.close()
    with SqliteSaver.from_conn_string(str(tmp_path / "ck.sqlite")) as saver:
        ctx = ctx_for(tmp_path / "crash", OracleVerifier(gold))
        build_annotate_graph(ctx, checkpointer=saver).invoke(None, config)
    got = {r["row_id"]: (r["label"], r["label_source"], r["confidence"]) for r in ctx.store.results()}
    assert got == expected
