"""Whole runs on each engine: the Ray engine labels like the local one; kill -9 mid-run then --resume on Ray
labels every row once and never pays for an answer twice (a real loopback endpoint counts the answers)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from autoannotator import runner  # noqa: E402
from autoannotator.config import Settings  # noqa: E402
from autoannotator.run.cache import AnswerCache  # noqa: E402
from autoannotator.task import parse_labels  # noqa: E402
from autoannotator.verify.llm import prompt_key  # noqa: E402
from autoannotator.verify.prompt import VerifyPrompt  # noqa: E402
from autoannotator.verify.simulated import SimulatedVerifier  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
INSTRUCTION = "label these reviews for sentiment"
MODELS = ["vader", "textblob", "afinn"]


def _reviews() -> list[dict[str, str]]:
    with open(REPO / "examples" / "reviews.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _shards(folder: Path, copies: int = 2) -> tuple[Path, list[str], list[str]]:
    """The example reviews, each text made unique per copy, as two CSV shards (one gzip-compressed)."""
    rows = [{"text": f"{r['text']} ({c})" if c else r["text"], "label": r.get("label", "")}
            for c in range(copies) for r in _reviews()]
    folder.mkdir()
    half = len(rows) // 2
    for name, part in (("a.csv", rows[:half]), ("b.csv", rows[half:])):
        pd.DataFrame(part).to_csv(folder / name, index=False)
    return folder, [r["text"] for r in rows], [r["label"] for r in rows]


@pytest.fixture(scope="module", autouse=True)
def _ray_down_after():
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_ray_engine_labels_like_the_local_engine(tmp_path):
    data, texts, gold = _shards(tmp_path / "data")
    outputs = {}
    for engine in ("local", "ray"):
        settings = Settings(models=MODELS, sandbox="none", engine=engine, batch_size=40, beta=100_000,
                            runs_dir=tmp_path / "runs")
        report, run_dir = runner.label(
            settings, data, instruction=INSTRUCTION, labels=parse_labels("positive,negative,neutral"),
            gold_column="label", run_dir=tmp_path / engine,
            verifier_factory=lambda task, _d, run_id: SimulatedVerifier(gold, task, 0.9, run_id=run_id))
        out = pd.read_csv(report["run"]["out_path"], dtype=str, keep_default_na=False)
        assert out["text"].tolist() == texts  # every row once, in input order
        outputs[engine] = out
        assert ("ray" in report["sandbox"]) == (engine == "ray")
    local, on_ray = outputs["local"], outputs["ray"]
    assert (local["label_source"] == "llm_verified").any() and (local["label_source"] == "slm_consensus").any()
    for col in ("label", "label_source", "uncertainty", "votes"):
        assert on_ray[col].tolist() == local[col].tolist(), col


# --- kill -9 then --resume on Ray ---------------------------------------------------------------

def _endpoint(latency: float, concurrency: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "_fake_llm.py"), "--latency", str(latency),
                             "--max-concurrency", str(concurrency * 4)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    return proc, line.split()[1]


def _answers(base_url: str) -> dict[str, int]:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_log", timeout=10) as r:
        return json.loads(r.read())


def _stored_rows(run_dir: Path) -> int:
    try:
        with sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


def _session_processes(pid: int) -> list[int]:
    """Ray processes of the local instance a driver with this pid started (its session dir ends in _pid)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if f"_{pid}/" in line or f"_{pid} " in line
            if "session_" in line]


def test_kill_9_mid_run_then_resume_on_ray(tmp_path):
    data, texts, _ = _shards(tmp_path / "data", copies=3)
    run_dir = tmp_path / "run"
    concurrency = 2
    proc_ep, base_url = _endpoint(0.05, concurrency)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "AUTOANNOTATOR_LLM_MAX_CONCURRENCY": str(concurrency), "AUTOANNOTATOR_LLM_API_KEY": "unused"}
    cmd = [sys.executable, "-m", "autoannotator.cli.app", "label", str(data), "--task", INSTRUCTION,
           "--labels", "positive,negative,neutral", "--models", ",".join(MODELS), "--sandbox", "none",
           "--batch-size", "20", "--beta", "100000", "--engine", "ray", "--llm-base-url", base_url,
           "--llm-model", "fake-llm", "--run-dir", str(run_dir), "--quiet"]
    try:
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while _stored_rows(run_dir) < 60 and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, f"the run ended before the kill: {first.stderr.read()[-2000:]}"
        stored_at_kill = _stored_rows(run_dir)
        assert 0 < stored_at_kill < len(texts)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        # what was paid for before the kill, by the product's own cache key
        plan = runner.RunPlan.load(run_dir)
        prompt = VerifyPrompt(plan.task, Settings().llm_max_text_chars)
        msgs = {t: prompt.messages(t) for t in texts}
        model_id = f"fake-llm@{base_url}"  # the product's model id for an endpoint: model@base_url
        keys = {t: prompt_key(model_id, plan.task.label_names, m) for t, m in msgs.items()}
        paid_before = set(AnswerCache(run_dir / "llm_cache.sqlite").get_many(list(keys.values())))
        assert paid_before, "no answer was stored before the kill"
        time.sleep(3)
        leftovers = _session_processes(first.pid)  # the orchestrator's local Ray instance dies with it
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"Ray processes outlived their driver: {leftovers}"

        resumed = subprocess.run(cmd[:4] + ["--resume", str(run_dir), "--engine", "ray", "--llm-base-url", base_url,
                                            "--llm-model", "fake-llm", "--quiet"],
                                 env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        out = pd.read_csv(plan.out_path, dtype=str, keep_default_na=False)
        assert out["text"].tolist() == texts  # every row once, in input order
        answered = _answers(base_url)
        by_text = {t: answered.get(hashlib.sha256(m[-1].content.encode("utf-8")).hexdigest(), 0)
                   for t, m in msgs.items()}
        for t in texts:
            if keys[t] in paid_before:
                assert by_text[t] == 1, f"paid twice: {t!r}"
        twice = [t for t, n in by_text.items() if n > 1]
        assert len(twice) <= concurrency, twice  # at most the requests in flight at the kill
        verified = out[out["label_source"] == "llm_verified"]
        assert len(verified) and all(by_text[t] >= 1 for t in verified["text"])
    finally:
        proc_ep.terminate()
        proc_ep.wait(10)


def _untimed(record: dict) -> dict:
    """A round's record without its clock readings and the weights' path (they differ between two runs)."""
    return {k: _untimed(v) if isinstance(v, dict) else v for k, v in record.items()
            if k != "weights" and not k.endswith(("seconds", "per_s"))}


def test_ray_engine_fine_tunes_on_a_worker_like_the_local_engine(tmp_path):
    """A trainable model in the ensemble: its rounds run as Ray tasks, and the run keeps the same rounds,
    labels and votes as on the local engine."""
    data, texts, gold = _shards(tmp_path / "data")
    outs, rounds = {}, {}
    for engine in ("local", "ray"):
        settings = Settings(models=["vader", "textblob", "tfidf"], sandbox="none", engine=engine, batch_size=40,
                            beta=60, runs_dir=tmp_path / "runs")
        report, run_dir = runner.label(
            settings, data, instruction=INSTRUCTION, labels=parse_labels("positive,negative,neutral"),
            gold_column="label", run_dir=tmp_path / f"ft-{engine}",
            verifier_factory=lambda task, _d, run_id: SimulatedVerifier(gold, task, 0.9, run_id=run_id))
        outs[engine] = pd.read_csv(report["run"]["out_path"], dtype=str, keep_default_na=False)
        rounds[engine] = [_untimed(r) for r in report["finetune_rounds"]]
    assert len(rounds["local"]) >= 2 and rounds["ray"] == rounds["local"]
    for col in ("label", "label_source", "votes"):
        assert outs["ray"][col].tolist() == outs["local"][col].tolist(), col
