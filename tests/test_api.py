"""The Python API as a notebook would use it: no model is started (a seeded simulated verifier stands in
for the LLM), the SLMs are the real lexicon scorers and the real trainable student."""

from __future__ import annotations

import json
import subprocess
import sys
from contextvars import ContextVar
from pathlib import Path

import pandas as pd
import pytest
from fakes import ScriptedChatModel
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tracers.context import register_configure_hook

import autoannotator as aa
from autoannotator.errors import UserError
from autoannotator.run.paths import RunPaths
from autoannotator.task import LabelDef, TaskSpec
from autoannotator.verify.llm import LLMVerifier
from autoannotator.verify.simulated import SimulatedVerifier

REPO = Path(__file__).resolve().parents[1]
TASK = "label these reviews for sentiment"
LABELS = ["positive", "negative"]
FAST = {"models": ["vader", "textblob", "student"], "sandbox": "none", "batch_size": 16}


def _reviews(n: int | None = None) -> pd.DataFrame:
    frame = pd.read_csv(REPO / "examples" / "reviews.csv")
    return frame.head(n) if n else frame


def _simulated(gold: list[str], p: float = 0.9):
    """The verifier factory a notebook user could pass too: (task, run_dir, run_id) -> Verifier."""
    def factory(task, run_dir, run_id):
        return SimulatedVerifier(gold, task, p, run_id=run_id)
    return factory


def test_import_is_cheap_and_lazy():
    code = "import sys, autoannotator as aa; print(aa.__version__, 'torch' in sys.modules, 'langchain_core' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split()[1:] == ["False", "False"]
    assert callable(aa.label) and callable(aa.plan) and callable(aa.bench) and callable(aa.resume)
    with pytest.raises(AttributeError):
        aa.no_such_thing  # noqa: B018


def _scripted_llm(answers: dict[str, str], n: int):
    """A verifier factory around the real LLMVerifier (its SQLite answer cache and ledger) whose chat model
    is scripted: it answers each text's gold label, and at most ``n`` calls."""
    def answer(messages):
        text = str(messages[-1].content)
        return {"label": next(lbl for t, lbl in answers.items() if t in text)}

    def factory(task, run_dir, run_id):
        return LLMVerifier(ScriptedChatModel([answer] * n), "scripted", task, RunPaths(run_dir).answers, run_id)
    return factory


def test_label_a_dataframe_then_resume(tmp_path):
    df = _reviews(64)
    answers = dict(zip(df["text"], df["label"]))
    res = aa.label(df, task=TASK, labels=LABELS, gold_column="label", run_dir=tmp_path / "run",
                   runs_dir=tmp_path / "runs", beta=16, verifier=_scripted_llm(answers, 64), **FAST)
    out = res.data
    assert len(out) == 64 and out["text"].tolist() == df["text"].tolist()  # every row, in order, once
    assert set(out["label"]) <= set(LABELS) and set(out["label_source"]) <= {"slm_consensus", "llm_verified"}
    assert out["input_label"].tolist() == df["label"].tolist()  # the gold column, renamed beside ours
    report = res.report
    assert isinstance(report, aa.Report) and report.n_samples == 64
    assert report.llm_calls == int((out["label_source"] == "llm_verified").sum())
    assert report.accuracy == pytest.approx((out["label"] == out["input_label"]).mean(), abs=1e-4)
    assert report.finetune_rounds, "beta = 16 must trigger a fine-tuning round"
    assert sum(b["rows"] for b in report.per_batch) == 64 and len(report.per_batch) == 4
    # per_batch counts the verifier's answers: a repeated text answered from the cache counts there, not as a call.
    assert report.llm_calls <= sum(b["llm_calls"] for b in report.per_batch) <= 64
    # the plan includes the audit, and so does the spend set beside it
    assert report.estimate["llm_calls"]["spent"] == report.llm_calls + report.audit_llm_calls
    # The in-memory frame went into the run directory as Parquet; the report as json, md and html.
    assert (res.run_dir / "input.parquet").is_file() and res.run_dir == tmp_path / "run"
    for name in ("report.json", "report.md", "report.html", "estimate.json"):
        assert (res.run_dir / name).is_file(), name
    html = (res.run_dir / "report.html").read_text()
    assert 'id="per-batch"' in html and 'id="trajectory"' in html and 'id="confusion"' in html
    assert 'id="estimate"' in html and "## The plan's estimate" in (res.run_dir / "report.md").read_text()
    assert report.llm_calls > 0 and report.accuracy > 0.7
    # A finished run resumes to the same rows, asking nothing: the new chat model's script is empty.
    again = aa.resume(res.run_dir, verifier=_scripted_llm(answers, 0))
    assert again.data["label"].tolist() == out["label"].tolist() and again.report.llm_calls == report.llm_calls


def test_records_and_iterators_are_accepted(tmp_path):
    rows = _reviews(20)[["text", "label"]].to_dict("records")
    gold = [r["label"] for r in rows]
    for name, data in (("list", rows), ("iter", iter(rows))):
        where = {"run_dir": tmp_path / name} if name == "list" else {}  # the second in a directory of its own naming
        res = aa.label(data, task=TASK, labels="positive,negative", runs_dir=tmp_path / "runs",
                       verifier=_simulated(gold), verifier_info={"simulated": True}, **where, **FAST)
        assert len(res.data) == 20 and set(res.data["label"]) <= set(LABELS)
    # a run directory named for its run: the id in its report is the directory's name
    assert res.run_dir.parent == tmp_path / "runs" and res.run_dir.name == res.report.run["run_id"]


def test_bad_input_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown setting"):
        aa.label(_reviews(5), task=TASK, labels=LABELS, bta=3)
    with pytest.raises(UserError, match="not a single dict"):
        aa.label({"text": "hi"}, task=TASK, labels=LABELS, run_dir=tmp_path / "a")
    with pytest.raises(UserError, match="row 1 is a str"):
        aa.label([{"text": "a"}, "b"], task=TASK, labels=LABELS, run_dir=tmp_path / "b")
    with pytest.raises(UserError, match="say what to label"):
        aa.label(_reviews(5), labels=LABELS)
    with pytest.raises(UserError, match="label set"):
        aa.plan(_reviews(5), task=TASK)


def test_plan_estimates_within_its_range_what_the_run_spends(tmp_path):
    """The issue's check: the estimate from a 100-row pilot, then the whole 300-row run (β = 60: the
    student trains and may vote, the case the range has to widen for)."""
    df = _reviews()
    # The paper's routing rule: the one the estimate replays on the pilot (the calibrated rule is not).
    settings = {**FAST, "beta": 60, "batch_size": 32, "runs_dir": tmp_path / "runs", "routing": "paper"}
    est = aa.plan(df, task=TASK, labels=LABELS, verifier="simulated", pilot_rows=100, **settings)
    assert est.pilot_rows == 100 and est.n_labelled_rows == 300
    assert est.llm_calls.low <= est.llm_calls.expected <= est.llm_calls.high < est.llm_only.llm_calls == 300
    res = aa.label(df, task=TASK, labels=LABELS, gold_column="label", run_dir=tmp_path / "run",
                   verifier=_simulated(df["label"].tolist()), verifier_info={"simulated": True}, **settings)
    spent = res.report
    assert est.llm_calls.low <= spent.llm_calls <= est.llm_calls.high, (est.llm_calls, spent.llm_calls)
    tokens = spent.llm_tokens_in + spent.llm_tokens_out
    assert est.tokens.low <= tokens <= est.tokens.high, (est.tokens, tokens)
    assert est.cost_usd.low <= spent.est_cost_usd <= est.cost_usd.high
    # The run made its own estimate (a pilot of all 300 rows) and the report sets it beside the spend.
    assert spent.estimate["llm_calls"]["in_range"] is True and spent.estimate["pilot_rows"] == 300


class _Collector(BaseCallbackHandler):
    """What a LangSmith / OpenTelemetry tracer sees: every chat model run LangChain starts."""

    runs: list[list] = []

    def on_chat_model_start(self, serialized, messages, **kwargs):
        type(self).runs.append(messages)


_trace_var: ContextVar = ContextVar("aa_test_tracer", default=None)
register_configure_hook(_trace_var, inheritable=True, handle_class=_Collector, env_var="AA_TEST_TRACING")


def test_verifier_calls_reach_langchain_tracers(tmp_path, monkeypatch):
    """Tracing by environment variable (as LANGSMITH_TRACING=true does) sees every verification call,
    made on the verifier's own event-loop thread."""
    monkeypatch.setenv("AA_TEST_TRACING", "true")
    _Collector.runs.clear()
    task = TaskSpec(instruction=TASK, labels=[LabelDef(name=n) for n in LABELS])
    chat = ScriptedChatModel([{"label": "positive"}, {"label": "negative"}, {"label": "positive"}])
    verifier = LLMVerifier(chat, "scripted", task, tmp_path / "answers.sqlite", "r1")
    got = verifier.verify([(0, "great"), (1, "awful"), (2, "fine")])
    assert [r.label for r in got] == ["positive", "negative", "positive"]
    assert len(_Collector.runs) == 3
    traced = " ".join(str(m.content) for run in _Collector.runs for batch in run for m in batch)
    assert "great" in traced and "awful" in traced and "<text_to_classify>" in traced
    monkeypatch.delenv("AA_TEST_TRACING")
    _Collector.runs.clear()
    LLMVerifier(ScriptedChatModel([{"label": "positive"}]), "scripted", task, tmp_path / "b.sqlite",
                "r2").verify([(0, "hello")])
    assert _Collector.runs == []  # off unless the environment turns it on


def test_cli_plan_and_dry_run_label_nothing(tmp_path):
    data = tmp_path / "reviews.csv"
    _reviews(120).to_csv(data, index=False)
    cmd = [sys.executable, "-m", "autoannotator.cli.app", "plan", str(data), "--task", TASK, "--labels",
           "positive,negative", "--models", "vader,textblob,student", "--verifier", "simulated", "--pilot-rows", "60",
           "--log-format", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    est = json.loads(proc.stdout)
    assert est["pilot_rows"] == 60 and est["llm_only"]["llm_calls"] == 120
    dry = subprocess.run([sys.executable, "-m", "autoannotator.cli.app", "label", str(data), "--task", TASK,
                          "--labels", "positive,negative", "--models", "vader,textblob,student", "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "LLM calls:" in dry.stdout and "labelling everything with the LLM: 120" in dry.stdout
    assert not (tmp_path / "runs").exists()  # nothing was labelled, no run directory made


def test_bench_returns_its_rows_as_a_table(tmp_path):
    res = aa.bench(_reviews(40), task=TASK, gold_column="label", verifier="simulated:0.9", out_dir=tmp_path / "b",
                   models=["vader", "textblob"], sandbox="none", batch_size=16, betas=[100_000], trajectory=False,
                   command="aa.bench(...)")
    assert list(res.table["name"][:3]) == ["slm:vader", "slm:textblob", "majority_vote"]
    assert len(res.table) == len(res.rows) and (tmp_path / "b" / "results.json").is_file()
    assert json.loads((tmp_path / "b" / "results.json").read_text())[0]["name"] == "slm:vader"
    assert "Command: `aa.bench(...)`" in (tmp_path / "b" / "results.md").read_text()
