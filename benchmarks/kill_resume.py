"""kill -9 of a labelling run mid-way, then ``--resume``, on each engine: every row once, no answer paid twice.

For each engine: N synthetic rows (benchmarks/scaling.py's data: the UCI sentences, each text made unique), the
lexicon models, the verifier pointed at the loopback fake endpoint (benchmarks/_fake_llm.py, which counts how
many times it answered each prompt). ``autoannotator label`` runs as its own process; once the run store holds
``--kill-at`` of the rows it gets SIGKILL (on Ray, the local Ray instance it started is then killed too, as a
lost machine would lose it), and ``autoannotator label --resume`` finishes the run. Checked:

- the output holds every input row exactly once, in input order (its ``id`` column is 0..N-1);
- no prompt whose answer was in the cache at the kill was asked again (the endpoint's own count per prompt);
  only requests in flight at the kill (at most the concurrency) can be answered twice, and are counted;
- the endpoint's answers equal the run's ledger (report.json ``llm_calls``) plus those lost in flight.

``--llm-budget`` caps the LLM's share of rows (default 2 %) so the run's time goes to the rows, not to 34 %
of them waiting on the endpoint; routing is the paper's (U >= epsilon), so which rows are asked does not
depend on the fake endpoint's (constant) answers.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/kill_resume.py --rows 100000 --engines local,ray
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import LABELS, REPO, write_synthetic  # noqa: E402

INSTRUCTION = "label these sentences for sentiment"
MODELS = "vader,textblob,afinn"


def _endpoint(latency: float, max_concurrency: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "_fake_llm.py"), "--latency", str(latency),
                             "--max-concurrency", str(max_concurrency)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"the fake endpoint did not start: {line!r}")
    return proc, line.split()[1]


def _get(base_url: str, path: str) -> Any:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + path, timeout=30) as r:
        return json.loads(r.read())


def _count(db_path: Path, sql: str) -> int:
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0


def _cache_keys(run_dir: Path) -> set[str]:
    with sqlite3.connect(f"file:{run_dir / 'llm_cache.sqlite'}?mode=ro", uri=True, timeout=30) as db:
        return {k for (k,) in db.execute("SELECT key FROM verify_cache")}


def _ray_session_processes(pid: int) -> list[int]:
    """Processes of the local Ray instance a driver with this pid started (its session dir ends in _<pid>)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if "session_" in line and (f"_{pid}/" in line or f"_{pid} " in line)]


def _prompt_keys(run_dir: Path, base_url: str, texts: list[str]) -> dict[str, tuple[str, str]]:
    """sha256 of each text's user message (what the endpoint logs) -> (text, the product's cache key)."""
    from autoannotator.config import Settings
    from autoannotator.run.plan import RunPlan
    from autoannotator.verify.llm import prompt_key
    from autoannotator.verify.prompt import VerifyPrompt

    plan = RunPlan.load(run_dir)
    prompt = VerifyPrompt(plan.task, Settings().llm_max_text_chars)
    model_id = f"fake-llm@{base_url}"  # the product's model id for an endpoint: model@base_url
    out = {}
    for t in texts:
        msgs = prompt.messages(t)
        out[hashlib.sha256(msgs[-1].content.encode("utf-8")).hexdigest()] = (t, prompt_key(model_id, plan.task.label_names,
                                                                                             msgs))
    return out


def one_engine(engine: str, data: Path, texts: list[str], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = work / f"run-{engine}"
    ep, base_url = _endpoint(args.latency, 4 * args.concurrency)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "AUTOANNOTATOR_LLM_MAX_CONCURRENCY": str(args.concurrency), "AUTOANNOTATOR_LLM_API_KEY": "unused"}
    base = [sys.executable, "-m", "autoannotator.cli.app", "label"]
    llm = ["--engine", engine, "--llm-base-url", base_url, "--llm-model", "fake-llm", "--quiet"]
    first_cmd = base + [str(data), "--task", INSTRUCTION, "--labels", ",".join(LABELS), "--models", MODELS,
                        "--sandbox", "none", "--routing", "paper", "--llm-budget", str(args.llm_budget),
                        "--run-dir", str(run_dir)] + llm
    n = len(texts)
    res: dict[str, Any] = {"engine": engine, "rows": n}
    try:
        start = time.perf_counter()
        first = subprocess.Popen(first_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
        target = int(args.kill_at * n)
        while first.poll() is None and _count(run_dir / "run.sqlite", "SELECT COUNT(*) FROM results") < target:
            time.sleep(0.5)
        if first.poll() is not None:
            raise SystemExit(f"{engine}: the run ended before the kill: {first.stderr.read()[-2000:]}")
        first.send_signal(signal.SIGKILL)  # the orchestrator only
        first.wait(60)
        res["first_s"] = time.perf_counter() - start
        res["stored_at_kill"] = _count(run_dir / "run.sqlite", "SELECT COUNT(*) FROM results")
        stats = _get(base_url, "/_stats")
        time.sleep(2 * args.latency + 1)  # requests in flight at the kill are answered into a closed socket
        res["answered_at_kill"] = _get(base_url, "/_stats")["answered"]
        res["in_flight_at_kill"] = stats.get("in_flight")
        paid_before = _cache_keys(run_dir)
        res["cached_at_kill"] = len(paid_before)
        time.sleep(3)
        leftovers = _ray_session_processes(first.pid)
        res["ray_processes_left_after_kill"] = len(leftovers)
        if leftovers:  # the lost machine's Ray instance goes with it
            os.killpg(first.pid, signal.SIGKILL)

        start = time.perf_counter()
        resumed = subprocess.run(base + ["--resume", str(run_dir)] + llm, env=env, capture_output=True, text=True,
                                 timeout=args.timeout)
        res["resume_s"] = time.perf_counter() - start
        if resumed.returncode:
            raise SystemExit(f"{engine}: the resumed run failed (rc {resumed.returncode}): {resumed.stderr[-3000:]}")
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
        import pandas as pd

        out = pd.read_csv(report["run"]["out_path"], dtype=str, keep_default_na=False)
        ids = [int(x) for x in out["id"]]
        res["output_rows"] = len(ids)
        res["every_row_once_in_order"] = ids == list(range(n)) and out["text"].tolist() == texts
        answered = _get(base_url, "/_log")
        keys = _prompt_keys(run_dir, base_url, texts)
        twice = {h: c for h, c in answered.items() if c > 1}
        res["endpoint_answers"] = sum(answered.values())
        res["prompts_answered_twice"] = len(twice)
        res["cached_answer_asked_again"] = sum(1 for h in twice if keys.get(h, ("", ""))[1] in paid_before)
        res["unknown_prompts"] = sum(1 for h in answered if h not in keys)
        res["ledger_calls"] = report["llm_calls"] + report.get("audit_llm_calls", 0)  # routing's and audit's
        res["report_rows"] = report["n_samples"]
        res["label_sources"] = report["label_sources"]
        res["ok"] = (res["every_row_once_in_order"] and res["cached_answer_asked_again"] == 0
                     and res["prompts_answered_twice"] <= args.concurrency and res["unknown_prompts"] == 0
                     and res["report_rows"] == n
                     and res["endpoint_answers"] == res["ledger_calls"] + res["prompts_answered_twice"])
    finally:
        ep.terminate()
        ep.wait(10)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--engines", default="local,ray")
    ap.add_argument("--kill-at", type=float, default=0.5, help="share of the rows stored when the kill comes")
    ap.add_argument("--llm-budget", type=float, default=0.02)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout", type=int, default=7200, help="seconds the resumed run may take")
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aa-kill-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = work / f"synthetic-{args.rows}.csv"
        write_synthetic(data, args.rows)
        import pandas as pd

        texts = pd.read_csv(data, dtype=str, keep_default_na=False)["text"].tolist()
        failed = False
        for engine in args.engines.split(","):
            res = one_engine(engine, data, texts, work, args)
            print("RESULT " + json.dumps(res), flush=True)
            print(f"{engine}: killed at {res['stored_at_kill']}/{res['rows']} rows after {res['first_s']:.0f} s "
                  f"({res['cached_at_kill']} answers cached, {res['in_flight_at_kill']} requests in flight; "
                  f"{res['ray_processes_left_after_kill']} Ray processes outlived the driver); resumed in "
                  f"{res['resume_s']:.0f} s; output {res['output_rows']} rows, each once in order: "
                  f"{res['every_row_once_in_order']}; endpoint answered {res['endpoint_answers']}, ledger "
                  f"{res['ledger_calls']}, prompts answered twice {res['prompts_answered_twice']} (of them cached "
                  f"before the kill: {res['cached_answer_asked_again']}) -> {'OK' if res['ok'] else 'FAILED'}",
                  flush=True)
            failed |= not res["ok"]
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
