"""`autoannotator label` end to end through the real CLI, the real SLMs and the real embedded LLM.

Includes the crash test: kill -9 in the middle of a run, then --resume; every row comes out once
and the resumed process never re-asks the LLM what the killed one had already paid for.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.embedded_llm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "autoannotator.cli.app", "label"]
TASK = ["--task", "label these reviews for sentiment", "--labels", "positive,negative", "--gold-column", "label"]
MODELS = ["--models", "vader,textblob,student"]  # the loop's tests; the planner has its own below


def _subset(tmp_path: Path, n: int) -> Path:
    frame = pd.read_csv(REPO / "examples" / "reviews.csv", dtype=str, keep_default_na=False).head(n)
    path = tmp_path / "reviews.csv"
    frame.to_csv(path, index=False)
    return path


def _running_workers() -> list[str]:
    out = subprocess.run(["docker", "ps", "--filter", "name=aa-sandbox-", "-q"], capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


def _check_outputs(data: Path, run_dir: Path) -> tuple[pd.DataFrame, dict]:
    report = json.loads((run_dir / "report.json").read_text())
    out = pd.read_csv(run_dir / "reviews.labelled.csv", dtype=str, keep_default_na=False)
    src = pd.read_csv(data, dtype=str, keep_default_na=False)
    assert out["text"].tolist() == src["text"].tolist()  # every input row, in order, once
    assert out["input_label"].tolist() == src["label"].tolist()  # the gold column survives, renamed
    assert set(out["label"]) <= {"positive", "negative"}
    # llm_overruled: the LLM answered, the posterior over every vote says otherwise (calibrated routing)
    assert set(out["label_source"]) <= {"slm_consensus", "llm_verified", "llm_overruled"}
    for key in ("n_samples", "llm_calls", "llm_call_rate", "llm_tokens_in", "llm_tokens_out", "est_cost_usd",
                "all_llm_baseline_cost_usd", "price_table", "finetune_rounds", "model_agreement", "timings_s",
                "accuracy", "by_label_source"):
        assert key in report, key
    n_llm = int(out["label_source"].isin(["llm_verified", "llm_overruled"]).sum())  # asked by the routing rule
    assert report["n_samples"] == len(src)
    assert report["llm_calls"] == n_llm  # texts are distinct: one paid call per routed row (audit counted apart)
    assert "confidence" in out.columns
    assert report["llm_call_rate"] == pytest.approx(n_llm / len(src), abs=1e-4)
    if n_llm:
        assert report["llm_tokens_in"] > 0 and report["est_cost_usd"] > 0
    accuracy = (out["label"] == out["input_label"]).mean()
    assert report["accuracy"] == pytest.approx(accuracy, abs=1e-4)
    for source, acc in report["by_label_source"].items():
        part = out[out["label_source"] == source]
        assert acc["n"] == len(part) and acc["correct"] == int((part["label"] == part["input_label"]).sum())
    votes = [json.loads(v) for v in out["votes"]]
    assert all(set(v) == {m["name"] for m in report["models"]} for v in votes)
    return out, report


def test_label_end_to_end_with_finetuning(tmp_path):
    data = _subset(tmp_path, 64)
    run_dir = tmp_path / "run"
    proc = subprocess.run(CLI + [str(data), *TASK, *MODELS, "--beta", "8", "--batch-size", "16", "--run-dir",
                                 str(run_dir)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    out, report = _check_outputs(data, run_dir)
    assert report["llm"]["embedded"] and any("embedded LLM" in w for w in report["warnings"])
    assert report["finetune_rounds"], "beta = 8 must trigger at least one fine-tuning round"
    for rec in report["finetune_rounds"]:
        assert rec["model"] == "student" and rec["n_holdout"] > 0 and rec["holdout_acc_after"] is not None
    assert (run_dir / "report.md").read_text().startswith("# autoannotator run")


def test_kill_9_then_resume(tmp_path):
    data = _subset(tmp_path, 160)
    run_dir = tmp_path / "run"
    args = [str(data), *TASK, *MODELS, "--beta", "100000", "--batch-size", "8", "--run-dir", str(run_dir), "--quiet"]
    first = subprocess.Popen(CLI + args, cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cache, store = run_dir / "llm_cache.sqlite", run_dir / "run.sqlite"
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None:
        if (_count(cache, "SELECT COUNT(*) FROM request_log") >= 5
                and _count(store, "SELECT COUNT(*) FROM results") >= 24):
            break
        time.sleep(0.2)
    assert first.poll() is None, "the run ended before it could be killed: " + first.stderr.read().decode()[-2000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    time.sleep(2)  # the embedded server's watchdog notices its parent is gone
    if shutil.which("docker"):  # the sandboxed worker stops when its orchestrator's connection drops
        deadline = time.time() + 30
        while time.time() < deadline and _running_workers():
            time.sleep(1)
        assert not _running_workers(), "a sandboxed worker outlived its killed run"

    with sqlite3.connect(cache) as conn:
        paid_before = {k for (k,) in conn.execute("SELECT key FROM verify_cache")}
    rows_before = _count(store, "SELECT COUNT(*) FROM results")
    assert paid_before and 0 < rows_before < 160

    second = subprocess.run(CLI + ["--resume", str(run_dir)], capture_output=True, text=True, timeout=900,
                            cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    out, report = _check_outputs(data, run_dir)
    with sqlite3.connect(cache) as conn:
        log = conn.execute("SELECT key, pid FROM request_log").fetchall()
    first_pids = {pid for key, pid in log if key in paid_before}
    resumed = [key for key, pid in log if pid not in first_pids]
    assert resumed, "the resumed run had hard rows left to verify"
    assert not set(resumed) & paid_before, "the resumed run re-paid for answers the killed run already had"
    assert len(log) == len({key for key, _ in log}), "some prompt was sent to the LLM twice"


def test_the_meta_controller_plans_without_labels_or_models(tmp_path):
    """No --labels, no --models, the embedded LLM: its planning steps are skipped for the deterministic
    choice (it is known to fail them), the plan is complete and says so."""
    data = _subset(tmp_path, 40)
    run_dir = tmp_path / "run"
    proc = subprocess.run(CLI + [str(data), "--task", "label these reviews for sentiment", "--gold-column", "label",
                                 "--run-dir", str(run_dir), "--batch-size", "20"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    assert len(plan["selection"]) == 3 and all(s["mapping"] for s in plan["selection"])
    assert any(s["trainable"] for s in plan["selection"])
    covered = {t for s in plan["selection"] for t in s["mapping"].values() if t}
    assert covered == set(plan["task"]["labels"][i]["name"] for i in range(len(plan["task"]["labels"])))
    probed = [c for c in plan["probe"]["candidates"] if c["loaded"]]
    assert probed and plan["decided_by"]["llm"].startswith("skipped: the embedded model is known to fail")
    assert all(c["agreement_with_llm"] is None for c in probed)  # its worse-than-chance labels rank nothing
    code = Path(plan["deployment"]["final_code"])
    assert code.is_file() and code.parent == run_dir / "deploy" / "ensemble"
    assert json.loads(code.with_suffix(".smoke.json").read_text())["exit_code"] == 0
    assert report["sandbox"].startswith(("docker", "local")) and report["n_samples"] == 40
    assert report["llm_calls_planning"] == 0  # no probe labels asked of the weak model
    out = pd.read_csv(run_dir / "reviews.labelled.csv", dtype=str, keep_default_na=False)
    assert len(out) == 40 and set(out["label"]) <= {lbl["name"] for lbl in plan["task"]["labels"]}
