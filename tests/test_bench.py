"""`autoannotator bench` end to end on a small labelled file with the simulated and the human verifier."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from autoannotator.benchmark.output import write_results
from autoannotator.benchmark.suite import run_bench
from autoannotator.config import Settings

REPO = Path(__file__).resolve().parents[1]


def _data(tmp_path: Path, n: int = 60) -> Path:
    path = tmp_path / "reviews.csv"
    pd.read_csv(REPO / "examples" / "reviews.csv", dtype=str, keep_default_na=False).head(n).to_csv(path, index=False)
    return path


def test_simulated_bench_rows_are_consistent_with_label_reports(tmp_path):
    settings = Settings(models=["vader", "textblob"], sandbox="none", batch_size=16)
    rows, trajectory, meta = run_bench(settings, _data(tmp_path), instruction="sentiment", gold_column="label",
                                       labels=None, text_column=None, verifier="simulated:0.9", epsilons=[1e-6, 0.5],
                                       betas=[100_000], out_dir=tmp_path / "out", budgets=[0.2])
    names = [r.name for r in rows]
    assert names[:3] == ["slm:vader", "slm:textblob", "majority_vote"] and "llm_only" in names
    assert {"autoannotator_no_finetune[paper] eps=1e-06", "autoannotator_no_finetune[paper] eps=0.5",
            "autoannotator_no_finetune[calibrated]", "autoannotator[calibrated]",
            "autoannotator[calibrated] budget=0.2"} <= set(names)
    llm_only = rows[names.index("llm_only")]
    assert llm_only.llm_calls == 60 and llm_only.verifier == "simulated verifier (P=0.9)"
    for row in rows:
        if row.name.startswith("autoannotator"):
            run = row.name.replace(" ", "_").replace("[", "").replace("]", "")
            report = json.loads((tmp_path / "out" / "runs" / run / "report.json").read_text())
            assert row.llm_calls == report["llm_calls"] and row.accuracy == report["accuracy"]
            assert report["llm"]["simulated"] is True
            assert row.routing == report["decision"]["routing"] and row.audit_calls == report["audit_llm_calls"]
    tight, loose = rows[names.index("autoannotator_no_finetune[paper] eps=1e-06")], rows[names.index(
        "autoannotator_no_finetune[paper] eps=0.5")]
    assert loose.llm_calls <= tight.llm_calls  # a higher epsilon sends fewer samples to the verifier
    budget = rows[names.index("autoannotator[calibrated] budget=0.2")]
    assert budget.llm_calls <= 0.2 * 60 and budget.llm_budget == 0.2
    write_results(rows, trajectory, {**meta, "command": "test"}, tmp_path / "out")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "simulated verifier (P=0.9)" in md and (tmp_path / "out" / "tradeoff.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["name"] == "slm:vader"


def test_human_verifier_in_bench(tmp_path, monkeypatch):
    answers = io.StringIO("1\n" * 200)  # the human always picks the first label
    monkeypatch.setattr("sys.stdin", answers)
    settings = Settings(models=["vader", "textblob"], sandbox="none", batch_size=16)
    rows, _, _ = run_bench(settings, _data(tmp_path, 20), instruction="sentiment", gold_column="label",
                           labels=None, text_column=None, verifier="human", epsilons=[1e-6], betas=[100_000],
                           out_dir=tmp_path / "out", include_llm_only=False)
    auto = [r for r in rows if r.name.startswith("autoannotator")]
    assert auto and all(r.verifier == "human verifier" for r in auto)
    assert all(r.llm_tokens_in == 0 for r in auto)


def test_a_benchmark_run_is_not_resumed_with_an_llm(tmp_path):
    """A bench run stopped midway (the CLI's stop message says `label --resume`) must not be finished by the
    run's default LLM: its answers came from the simulated verifier. Refused in one line, nothing started."""
    import pytest

    from autoannotator import api
    from autoannotator.errors import UserError

    settings = Settings(models=["vader", "textblob"], sandbox="none", batch_size=16)
    run_bench(settings, _data(tmp_path, 20), instruction="sentiment", gold_column="label", labels=None,
              text_column=None, verifier="simulated:0.9", epsilons=[1e-6], betas=[100_000], out_dir=tmp_path / "out",
              routings=["paper"], include_llm_only=False, trajectory=False)
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["verifier"]["simulated"] is True
    with pytest.raises(UserError, match="simulated verifier"):
        api.resume(run_dir, models=["vader", "textblob"], sandbox="none")
