"""`autoannotator runs ...` on real runs made without any LLM (a seeded simulated verifier, or a scripted human)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from autoannotator import runner
from autoannotator.verify.human import HumanVerifier
from autoannotator.run.cache import AnswerCache
from autoannotator.verify.llm import prompt_key
from autoannotator.verify.prompt import VerifyPrompt
from autoannotator.verify.simulated import SimulatedVerifier
from autoannotator.cli.app import app
from autoannotator.config import Settings
from autoannotator.data import load_dataset
from autoannotator.errors import UserError
from autoannotator.task import parse_labels

REPO = Path(__file__).resolve().parents[1]
INSTRUCTION = "label these reviews for sentiment"


def _data(tmp_path: Path, n: int = 40) -> Path:
    path = tmp_path / "reviews.csv"
    pd.read_csv(REPO / "examples" / "reviews.csv", dtype=str, keep_default_na=False).head(n).to_csv(path, index=False)
    return path


def _settings(tmp_path: Path) -> Settings:
    return Settings(models=["vader", "textblob"], beta=100_000, batch_size=8, runs_dir=tmp_path / "runs",
                    sandbox="none")


def _simulated_run(tmp_path: Path) -> Path:
    data = _data(tmp_path)
    gold = load_dataset(data, None, "label").gold
    _, run_dir = runner.label(
        _settings(tmp_path), data, instruction=INSTRUCTION, labels=parse_labels("positive,negative"),
        gold_column="label", verifier_factory=lambda task, _dir, run_id: SimulatedVerifier(gold, task, 0.9,
                                                                                          run_id=run_id),
        verifier_info={"simulated": True})
    return run_dir


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished run that the read-only tests share."""
    return _simulated_run(tmp_path_factory.mktemp("finished"))


def invoke(*args: str, input: str | None = None, columns: int = 200):
    return CliRunner().invoke(app, ["runs", *args], input=input, env={"COLUMNS": str(columns)})


def _ok(result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_list_shows_each_run_with_rows_calls_accuracy_and_status(finished):
    report = json.loads((finished / "report.json").read_text())
    out = _ok(invoke("list", "--runs-dir", str(finished.parent)))
    assert finished.name in out and "reviews.csv" in out and "40/40" in out and "finished" in out
    assert f"{report['accuracy']:.4f}" in out and f" {report['llm_calls']} " in out
    narrow = _ok(invoke("list", "--runs-dir", str(finished.parent), columns=80))
    assert finished.name in narrow  # never cut, even on a narrow terminal
    assert "no runs in" in _ok(invoke("list", "--runs-dir", str(finished.parent / "nothing-here")))


def test_show_renders_the_report_and_json(finished):
    out = _ok(invoke("show", str(finished)))
    assert "Accuracy against gold" in out and "vader" in out
    by_prefix = _ok(invoke("show", finished.name[:15], "--runs-dir", str(finished.parent), "--json"))
    assert json.loads(by_prefix) == json.loads((finished / "report.json").read_text())
    bad = invoke("show", "no-such-run", "--runs-dir", str(finished.parent))
    assert isinstance(bad.exception, UserError) and "no run 'no-such-run'" in str(bad.exception)


def test_ambiguous_prefix_is_a_user_error(tmp_path):
    runs = tmp_path / "runs"
    for name in ("2026-a", "2026-b"):
        (runs / name).mkdir(parents=True)
        (runs / name / "run.json").write_text("{}")
    result = invoke("show", "2026", "--runs-dir", str(runs))
    assert isinstance(result.exception, UserError) and "matches 2 runs" in str(result.exception)


def test_code_without_deploy_folder_says_models_ran_in_process(finished):
    out = _ok(invoke("code", str(finished)))
    assert "no generated code" in out and "in-process" in out and "vader, textblob" in out


def test_code_shows_every_version_in_order_with_its_smoke_test(tmp_path, finished):
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    (run_dir / "run.json").write_text((finished / "run.json").read_text())
    ens, vader = run_dir / "deploy" / "ensemble", run_dir / "deploy" / "vader"
    ens.mkdir(parents=True), vader.mkdir(parents=True)
    for n in (1, 2, 10):
        (ens / f"v{n}.py").write_text(f"VERSION = {n}\n")
    (ens / "v2.smoke.json").write_text(json.dumps({"exit_code": 0, "stdout": "smoke-ok-2", "stderr": "",
                                                   "backend": "local"}))
    (ens / "v10.smoke.json").write_text(json.dumps({"exit_code": 1, "stdout": "", "stderr": "Boom-10",
                                                    "backend": "docker"}))
    (vader / "v1.py").write_text("VADER = True\n")
    out = _ok(invoke("code", str(run_dir)))
    assert out.index("VERSION = 1") < out.index("VERSION = 2") < out.index("VERSION = 10")  # v10 after v2
    assert "smoke-ok-2" in out and "Boom-10" in out and "exit code 1 · backend docker" in out
    assert "no smoke test recorded" in out and "VADER = True" in out
    only = _ok(invoke("code", str(run_dir), "vader"))
    assert "VADER = True" in only and "VERSION" not in only
    bad = invoke("code", str(run_dir), "student")
    assert isinstance(bad.exception, UserError) and "ensemble, vader" in str(bad.exception)


def test_sample_shows_votes_route_answer_label_and_gold(finished):
    rows = pd.read_csv(finished / "reviews.labelled.csv", dtype=str, keep_default_na=False)
    consensus = int(rows.index[rows["label_source"] == "slm_consensus"][0])
    verified = int(rows.index[rows["label_source"] == "llm_verified"][0])
    out = _ok(invoke("sample", str(finished), str(consensus)))
    assert rows.loc[consensus, "text"][:40] in out.replace("\n", " ")
    assert "vader" in out and "textblob" in out and "route: slm_consensus" in out and "not asked" in out
    assert f"gold (label): {rows.loc[consensus, 'input_label']}" in out
    out = _ok(invoke("sample", str(finished), str(verified)))
    assert "route: llm_verified" in out and "no cache record" in out
    assert f"final label: {rows.loc[verified, 'label']}" in out
    for bad in ("40", "-1"):
        result = invoke("sample", str(finished), "--", bad)
        assert isinstance(result.exception, UserError), result.output


def test_sample_reports_a_cached_llm_answer_with_its_tokens(tmp_path):
    run_dir = _simulated_run(tmp_path)
    plan = runner.RunPlan.load(run_dir)
    rows = pd.read_csv(run_dir / "reviews.labelled.csv", dtype=str, keep_default_na=False)
    row = int(rows.index[rows["label_source"] == "llm_verified"][0])
    # What the real Verifier would have stored for this row (same key scheme), paid by this run.
    msgs = VerifyPrompt(plan.task, Settings().llm_max_text_chars).messages(rows.loc[row, "text"])
    key = prompt_key("my-llm", plan.task.label_names, msgs)
    AnswerCache(run_dir / "llm_cache.sqlite").put(key, "my-llm", rows.loc[row, "label"], 120, 8, False, plan.run_id)
    out = _ok(invoke("sample", str(run_dir), str(row)))
    assert "LLM my-llm" in out and "answered for this run" in out and "tokens in/out 120/8" in out


def test_stopped_run_lists_as_stopped_then_resumes_with_its_human_verifier(tmp_path):
    data = _data(tmp_path)
    settings = _settings(tmp_path)

    def quitter(task, run_dir, run_id):
        return HumanVerifier(task, run_dir / "llm_cache.sqlite", run_id, input=io.StringIO("1\n2\nq\n"),
                             console=Console(file=io.StringIO()))

    with pytest.raises(KeyboardInterrupt):
        runner.label(settings, data, instruction=INSTRUCTION, labels=parse_labels("positive,negative"),
                     gold_column="label", verifier_factory=quitter, verifier_info={"human": True})
    (run_dir,) = (tmp_path / "runs").iterdir()
    out = _ok(invoke("list", "--runs-dir", str(tmp_path / "runs")))
    assert "stopped at row" in out and "/40" in out and "finished" not in out
    shown = invoke("show", str(run_dir))
    assert isinstance(shown.exception, UserError) and "no report yet" in str(shown.exception)

    # No --verifier: the run started with a human, so the human is asked again (stdin here).
    resumed = invoke("resume", str(run_dir), "--runs-dir", str(tmp_path / "runs"), input="p\n" * 40)
    assert "hard sample 1 of" in _ok(resumed)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["llm"]["model_id"] == "human" and report["n_samples"] == 40
    assert "finished" in _ok(invoke("list", "--runs-dir", str(tmp_path / "runs")))
    assert "nothing to resume" in _ok(invoke("resume", str(run_dir)))
    sample = _ok(invoke("sample", str(run_dir), str(_first_verified(run_dir))))
    assert "human: 'positive'" in sample or "human: 'negative'" in sample


def _first_verified(run_dir: Path) -> int:
    rows = pd.read_csv(run_dir / "reviews.labelled.csv", dtype=str, keep_default_na=False)
    return int(rows.index[rows["label_source"] == "llm_verified"][0])


def test_errors_are_one_line_through_the_real_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "autoannotator.cli.app", "runs", "show", "nope", "--runs-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error: no run 'nope'") and len(proc.stderr.strip().splitlines()) == 1


def test_sample_says_when_the_human_skipped_a_row_twice(tmp_path):
    data = _data(tmp_path, 16)

    def skipper(task, run_dir, run_id):  # skips every hard row, twice: the models' majority stays
        return HumanVerifier(task, run_dir / "llm_cache.sqlite", run_id, input=io.StringIO("s\n" * 200),
                             console=Console(file=io.StringIO()))

    report, run_dir = runner.label(_settings(tmp_path), data, instruction=INSTRUCTION,
                                   labels=parse_labels("positive,negative"), verifier_factory=skipper,
                                   verifier_info={"human": True})
    # a skipped row was asked and got no label: llm_failed, keeping the models' majority
    assert report["llm_calls"] == 0 and set(report["label_sources"]) == {"slm_consensus", "llm_failed"}
    rows = pd.read_csv(run_dir / "reviews.labelled.csv", dtype=str, keep_default_na=False)
    hard = int(rows.index[rows["uncertainty"].astype(float) > 0][0])
    assert rows["label_source"][hard] == "llm_failed"
    out = _ok(invoke("sample", str(run_dir), str(hard)))
    assert "skipped this row twice" in out and "majority" in out
    # retry-failed asks an LLM: for the rows a person chose to skip, not without being told to
    refused = invoke("retry-failed", str(run_dir))  # (the real entry point prints a UserError as one line)
    assert isinstance(refused.exception, UserError) and "verified by a person" in str(refused.exception)
    assert "--switch-llm" in str(refused.exception)
