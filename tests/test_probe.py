"""probe_models on both sandbox backends, and the two rankings it is compared with."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_sandbox import each_backend, use
from test_sandboxed_ensemble import make_tiny_hf

from autoannotator.task import LabelDef, TaskSpec
from autoannotator.deploy.probe import (
    RESULT_MODEL,
    CandidateProbe,
    ProbeReport,
    probe_models,
    rank_by_downloads,
    rank_by_probe,
)
from autoannotator.tools.plan_tools import make_probe_models_tool

LABELS = ["positive", "negative", "neutral"]
TEXTS = ["I love it, wonderful", "Awful, it broke", "The box is blue", "", "great great great",
         "terrible service", "It arrived", "not good", "superb", "bad"] * 2
LLM = ["positive", "negative", "neutral", None, "positive", "negative", "neutral", "negative", "positive",
       "negative"] * 2


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> str:
    folder = make_tiny_hf(tmp_path_factory.mktemp("tiny-hf"))
    return f"hf:{folder}#LABEL_0=negative,LABEL_1=positive,LABEL_2="


@each_backend
def test_probe(backend, tmp_path, tiny_spec):
    candidates = ["vader", tiny_spec, "student", "hf:nobody/not-cached", "profanity", "vader"]
    report = probe_models(candidates, TEXTS, LABELS, use(backend), tmp_path / "run", llm_labels=LLM)
    assert report.backend == backend and report.n_samples == 20 and report.error is None
    by = {c.spec: c for c in report.candidates}
    assert list(by) == ["vader", tiny_spec, "student", "hf:nobody/not-cached", "profanity"]  # deduplicated
    vader = by["vader"]
    assert vader.loaded and vader.coverage == LABELS and vader.n_compared == 18
    assert sum(vader.distribution.values()) == 20 and vader.distribution["abstain"] == 2  # the blank texts
    assert vader.agreement_with_llm is not None and vader.agreement_with_llm >= 0.6
    tiny = by[tiny_spec]
    assert tiny.loaded and tiny.coverage == ["positive", "negative"] and tiny.native_labels[0] == "LABEL_0"
    assert "stays in-process" in by["student"].error and not by["student"].loaded
    missing = by["hf:nobody/not-cached"]
    assert not missing.loaded and missing.error and "\n" not in missing.error
    profanity = by["profanity"]
    assert profanity.loaded and profanity.coverage == [] and profanity.abstain_rate == 1.0
    assert rank_by_probe(report, 3) == ["vader", tiny_spec]  # unusable ones are never ranked
    out = tmp_path / "run/deploy/probe"
    assert ProbeReport.model_validate_json((out / "probe1.json").read_text()) == report
    assert json.loads((out / "probe1.smoke.json").read_text())["backend"] == backend
    assert Path(report.program) == out / "probe1.py"


def _c(spec: str, agreement: float | None, coverage: int, abstain: float, loaded: bool = True) -> CandidateProbe:
    return CandidateProbe(spec=spec, loaded=loaded, coverage=LABELS[:coverage], abstain_rate=abstain,
                          agreement_with_llm=agreement)


def test_rank_by_probe_order():
    report = ProbeReport(task_labels=LABELS, n_samples=10, backend="local", seconds=1.0, candidates=[
        _c("a", 0.5, 3, 0.0), _c("b", 0.9, 2, 0.5), _c("c", 0.5, 3, 0.1), _c("d", 0.5, 2, 0.0),
        _c("e", 0.99, 0, 1.0), _c("f", 1.0, 3, 0.0, loaded=False), _c("g", None, 3, 0.0)])
    assert rank_by_probe(report, 10) == ["b", "a", "c", "d", "g"]  # agreement, coverage, abstain rate
    assert rank_by_probe(report, 2) == ["b", "a"]
    no_llm = report.model_copy(update={"candidates": [_c("x", None, 2, 0.0), _c("y", None, 3, 0.3),
                                                      _c("z", None, 3, 0.1)]})
    assert rank_by_probe(no_llm, 3) == ["z", "y", "x"]


def test_rank_by_downloads():
    rows = [("a", 10), ("b", None), ("c", 1000), ("d", 10)]
    assert rank_by_downloads(rows, 3) == ["c", "a", "d"]
    assert rank_by_downloads([{"spec": "x", "downloads": 1}, {"spec": "y", "downloads": 5}], 1) == ["y"]


def test_probe_tool(tmp_path):
    task = TaskSpec(instruction="sentiment", labels=[LabelDef(name=n) for n in LABELS])
    ctx = SimpleNamespace(run_dir=tmp_path / "run", samples=TEXTS, sandbox=use("local"), plan=SimpleNamespace(task=task),
                          llm_labels=LLM[:8])
    tool = make_probe_models_tool(None, ctx)
    assert tool.metadata["result_model"] is RESULT_MODEL is make_probe_models_tool.RESULT_MODEL
    out = tool.invoke({"candidates": ["afinn", "textblob"], "n_samples": 10})
    assert out["n_samples"] == 8 and [c["spec"] for c in out["candidates"]] == ["afinn", "textblob"]
    assert all(c["n_compared"] == 7 for c in out["candidates"])
    assert "invalid arguments for probe_models" in tool.invoke({"candidates": []})


def test_summary_file_is_read_safely(tmp_path):
    from autoannotator.deploy.probe import _read_summary

    stdout = 'noise\n{"ok": true, "models": {"vader": {"loaded": true}}}\n'
    (tmp_path / "host_secret.json").write_text('{"models": {"stolen": {}}}')
    planted = tmp_path / "smoke_report.json"
    planted.symlink_to(tmp_path / "host_secret.json")  # the sandbox may plant a link: never followed
    assert list(_read_summary(planted, stdout)) == ["vader"]
    planted.unlink()
    planted.write_text('{"models": {"vader": {"loaded": true, "native_labels": ["a"]}}}')
    assert _read_summary(planted, stdout)["vader"]["native_labels"] == ["a"]
    assert _read_summary(tmp_path / "missing.json", "garbage") == {}
