"""Hard kills at every step boundary, SIGTERM, and two processes on one run: real processes.

Each killed run is resumed; then every input row is in the output exactly once and no prompt got a
valid answer twice (the answer cache and the store agree with the checkpoint by construction).
``AUTOANNOTATOR_FAULT_KILL=WHEN:NODE:N`` makes the labelling process SIGKILL itself right before
(``before``) or right after (``after``) the N-th run of graph node NODE.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from harness import (assert_each_row_once, assert_no_prompt_answered_twice, cli_inprocess, cli_process,
                     label_args, one_line_error, write_data)

pytestmark = pytest.mark.slow

BOUNDARIES = [f"{when}:{node}:2" for node in ("load_batch", "ensemble", "verify", "accept")
              for when in ("before", "after")] + ["after:report:1"]


@pytest.mark.parametrize("point", BOUNDARIES)
def test_kill_at_a_step_boundary_then_resume(tmp_path, endpoint, monkeypatch, point):
    data = write_data(tmp_path / "data.csv")
    run_dir = tmp_path / "run"
    proc = cli_process(label_args(data, run_dir, endpoint), env={"AUTOANNOTATOR_FAULT_KILL": point})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
    answered_before = len(endpoint.log)
    code, err = cli_inprocess(["label", "--resume", str(run_dir), "-q"], monkeypatch)
    assert code == 0, err
    assert_each_row_once(run_dir, data)
    assert_no_prompt_answered_twice(endpoint)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["llm_calls"] == sum(1 for r in endpoint.log if r.status == 200)
    assert len(endpoint.log) >= answered_before


def test_kill_in_the_middle_of_a_batch_of_llm_calls(tmp_path, endpoint, monkeypatch):
    """SIGKILL while some answers of a batch are in and others in flight: those in are not paid again."""
    data = write_data(tmp_path / "data.csv", 48)
    run_dir = tmp_path / "run"
    endpoint.latency_s = 0.05
    holder: dict = {}

    def kill_on_fifth(text: str):
        if sum(1 for r in endpoint.log if r.status == 200) >= 5 and "proc" in holder:
            holder.pop("proc").kill()
        return None

    endpoint.fail_when(kill_on_fifth)
    proc = cli_process(label_args(data, run_dir, endpoint, "--batch-size", "48"))
    holder["proc"] = proc
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    endpoint.clear()
    first_log_answered = None
    code, err = cli_inprocess(["label", "--resume", str(run_dir), "-q"], monkeypatch)
    assert code == 0, err
    assert_each_row_once(run_dir, data)
    del first_log_answered


def test_sigterm_is_like_ctrl_c(tmp_path, endpoint, monkeypatch):
    data = write_data(tmp_path / "data.csv", 48)
    run_dir = tmp_path / "run"
    endpoint.latency_s = 0.3
    proc = cli_process(label_args(data, run_dir, endpoint))
    deadline = time.monotonic() + 60
    while not any(r.status == 200 for r in endpoint.log) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, err)
    assert "resume" in one_line_error(err)
    answered = {r.prompt_hash for r in endpoint.log if r.status == 200}
    endpoint.latency_s = 0.0
    code, err = cli_inprocess(["label", "--resume", str(run_dir), "-q"], monkeypatch)
    assert code == 0, err
    assert_each_row_once(run_dir, data)
    assert_no_prompt_answered_twice(endpoint)  # what came back before SIGTERM was kept
    assert answered


def test_two_processes_on_one_run(tmp_path, endpoint, monkeypatch):
    data = write_data(tmp_path / "data.csv", 48)
    run_dir = tmp_path / "run"
    endpoint.latency_s = 0.05
    first = cli_process(label_args(data, run_dir, endpoint))
    deadline = time.monotonic() + 60
    while not (run_dir / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = cli_process(["label", "--resume", str(run_dir), "-q"])
    out2, err2 = second.communicate(timeout=120)
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 2, err2
    line = one_line_error(err2)
    assert f"process {first.pid}" in line and "in use" in line
    assert_each_row_once(run_dir, data)
    assert_no_prompt_answered_twice(endpoint)
