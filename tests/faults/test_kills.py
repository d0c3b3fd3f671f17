"""Hard kills at every step boundary, SIGTERM, and two processes on one run: real processes.

``AUTOANNOTATOR_FAULT_KILL=WHEN:NODE:N`` makes the labelling process SIGKILL itself right before
(``before``) or right after (``after``: the node's writes done, its checkpoint not) the N-th run of
graph node NODE. After the kills the run is resumed to the end; then every input row is in the output
exactly once and no prompt got a valid answer twice.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from harness import (assert_each_row_once, assert_no_prompt_answered_twice, cli_inprocess, cli_process,
                     label_args, one_line_error, write_data)

pytestmark = pytest.mark.slow

# One process per boundary, each resuming the last: every boundary of the loop is crossed by a kill.
CHAIN = ["after:accept:1", "before:load_batch:1", "after:load_batch:1", "before:ensemble:1", "after:ensemble:1",
         "before:verify:1", "after:verify:1", "before:accept:1", "after:final_fit:1", "after:revote:1",
         "after:choose_top_up:1", "before:top_up:1", "after:top_up:1", "before:report:1", "after:report:1"]


def _all_calls(report: dict) -> int:
    """Every request the run paid for: the routing's LLM calls and the audit's (counted apart)."""
    return report["llm_calls"] + report.get("audit_llm_calls", 0)


def _report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def test_kill_at_every_step_boundary_then_resume(tmp_path, endpoint, monkeypatch):
    data = write_data(tmp_path / "data.csv", 40)  # 5 batches of 8: every process has work left
    run_dir = tmp_path / "run"
    for i, point in enumerate(CHAIN):
        args = label_args(data, run_dir, endpoint) if i == 0 else ["label", "--resume", str(run_dir), "-q"]
        proc = cli_process(args, env={"AUTOANNOTATOR_FAULT_KILL": point})
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == -signal.SIGKILL, f"{point}: rc {proc.returncode}: {err[-600:]}"
    code, err = cli_inprocess(["label", "--resume", str(run_dir), "-q"], monkeypatch)
    assert code == 0, err
    assert_each_row_once(run_dir, data)
    assert_no_prompt_answered_twice(endpoint)
    assert _all_calls(_report(run_dir)) == sum(1 for r in endpoint.log if r.status == 200)


def test_kill_while_llm_answers_arrive(tmp_path, endpoint, monkeypatch):
    """SIGKILL as the 6th request arrives: the 5 answers already in are kept, not paid again."""
    data = write_data(tmp_path / "data.csv", 48)
    run_dir = tmp_path / "run"
    holder: dict = {}

    def kill_at_sixth(text: str):
        if len(endpoint.log) == 6 and "proc" in holder:
            holder.pop("proc").kill()
            return "hang"
        return None

    endpoint.fail_when(kill_at_sixth)
    proc = cli_process(label_args(data, run_dir, endpoint, "--batch-size", "48"),
                       env={"AUTOANNOTATOR_LLM_MAX_CONCURRENCY": "1"})
    holder["proc"] = proc
    proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL
    first = {r.prompt_hash for r in endpoint.log if r.valid}
    assert len(first) == 5
    code, err = cli_inprocess(["label", "--resume", str(run_dir), "-q"], monkeypatch)
    assert code == 0, err
    assert_each_row_once(run_dir, data)
    assert_no_prompt_answered_twice(endpoint)


def test_sigterm_is_like_ctrl_c(tmp_path, endpoint, monkeypatch):
    data = write_data(tmp_path / "data.csv", 48)
    run_dir = tmp_path / "run"
    endpoint.latency_s = 0.3
    proc = cli_process(label_args(data, run_dir, endpoint))
    deadline = time.monotonic() + 120
    while not any(r.valid for r in endpoint.log) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, err[-600:])
    assert "resume" in one_line_error(err) and "SIGTERM" in err
    before = sum(1 for r in endpoint.log if r.valid)
    endpoint.latency_s = 0.0
    code, err = cli_inprocess(["label", "--resume", str(run_dir), "-q"], monkeypatch)
    assert code == 0, err
    assert_each_row_once(run_dir, data)
    assert_no_prompt_answered_twice(endpoint)  # what came back before (or during) SIGTERM was kept
    assert before >= 1


def test_two_processes_on_one_run(tmp_path, endpoint, monkeypatch):
    data = write_data(tmp_path / "data.csv", 48)
    run_dir = tmp_path / "run"
    endpoint.latency_s = 2.0  # the first run is still asking when the second has started (slow imports)
    first = cli_process(label_args(data, run_dir, endpoint), env={"AUTOANNOTATOR_LLM_MAX_CONCURRENCY": "1",
                                                                  "AUTOANNOTATOR_LLM_TIMEOUT_S": "10"})
    deadline = time.monotonic() + 120
    while not endpoint.log and time.monotonic() < deadline:  # it holds the run: it is asking the LLM
        time.sleep(0.05)
    second = cli_process(["label", "--resume", str(run_dir), "-q"])
    _, err2 = second.communicate(timeout=180)
    assert first.poll() is None, "the first run ended before the second started: the test proves nothing"
    endpoint.latency_s = 0.0
    _, err1 = first.communicate(timeout=180)
    assert first.returncode == 0, err1[-600:]
    assert second.returncode == 2, err2[-600:]
    line = one_line_error(err2)
    assert f"process {first.pid}" in line and "in use" in line
    assert_each_row_once(run_dir, data)
    assert_no_prompt_answered_twice(endpoint)
    assert _all_calls(_report(run_dir)) == sum(1 for r in endpoint.log if r.status == 200)
