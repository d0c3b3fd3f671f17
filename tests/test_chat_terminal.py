"""`autoannotator chat` in a real terminal (pexpect): a scripted conversation, then `chat --resume`.

The LLM is a JSON script of replies (AUTOANNOTATOR_CHAT_SCRIPT, played by tests/scripted_chat.py) and the verifier a seeded stand-in:
no test ever reaches a model.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

pexpect = pytest.importorskip("pexpect")

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][A-Z0-9]|[=>])")
PROMPT = "you › "


def _screen(raw: str) -> str:
    return ANSI.sub("", raw).replace("\r", "")


def _spawn(tmp_path: Path, *args: str) -> "pexpect.spawn":
    env = {**os.environ, "AUTOANNOTATOR_CHAT_SCRIPT": str(tmp_path / "script.json"), "TERM": "xterm-256color",
           "COLUMNS": "110", "LINES": "50", "AUTOANNOTATOR_MODELS": '["vader","textblob"]',
           "AUTOANNOTATOR_SANDBOX": "none", "AUTOANNOTATOR_BATCH_SIZE": "8", "PYTHONPATH": str(REPO)}
    child = pexpect.spawn(sys.executable, [str(REPO / "tests" / "scripted_chat.py"), "chat", "--runs-dir", "runs", *args],
                          cwd=str(tmp_path), env=env, encoding="utf-8", dimensions=(50, 110), timeout=90)
    child.logfile_read = open(tmp_path / f"screen-{len(list(tmp_path.glob('screen-*')))}.txt", "w")
    return child


def test_scripted_conversation_then_resume(tmp_path):
    pd.read_csv(REPO / "examples" / "reviews.csv", dtype=str, keep_default_na=False).head(40).to_csv(
        tmp_path / "reviews.csv", index=False)
    calls = [("start_labelling", {"data_path": "reviews.csv", "task": "label these reviews for sentiment",
                                  "labels": "positive,negative", "gold_column": "label"}),
             ("explain_row", {"row": 5}), ("show_code", {})]
    replies: list = []
    for name, args in calls:
        replies += [{"tool_calls": [{"name": name, "args": args}]}, f"Finished {name}."]
    (tmp_path / "script.json").write_text(json.dumps({"replies": replies}))

    child = _spawn(tmp_path, "--session", "demo")
    child.expect_exact(PROMPT)
    child.sendline("label reviews.csv for sentiment with labels positive,negative and gold column label")
    child.expect_exact("start it? [y/N]")
    child.sendline("yes")
    child.expect_exact("Finished start_labelling.")
    child.expect_exact(PROMPT)
    child.sendline("why did row 5 go to the LLM?")
    child.expect_exact("Finished explain_row.")
    child.expect_exact(PROMPT)
    child.sendline("show me the deployment code")
    child.expect_exact("Finished show_code.")
    child.expect_exact(PROMPT)
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    screen = _screen((tmp_path / "screen-0.txt").read_text())
    # The confirmation shows the plan and the estimate before anything runs.
    assert "confirm" in screen and "40 rows × 40% hard (default) ≈ 16 LLM calls" in screen
    # Each tool call is a panel; the counters line reached the last row.
    for name in ("◆ start_labelling", "◆ explain_row", "◆ show_code"):
        assert name in screen
    assert re.search(r"rows 40/40\s+LLM calls \d+\s+tokens \d+/\d+\s+cost \$\d\.\d{4}\s+agreement [\d.]+%\s+pool "
                     r"\d+/β=2000", screen)
    assert "40 rows labelled" in screen and "accuracy" in screen
    assert "row 5: U = " in screen and "vader" in screen and "no generated code" in screen
    assert "session saved: demo" in screen
    trace = tmp_path / "runs" / "chat" / "demo" / "trace.jsonl"
    assert {"user", "confirm", "confirm_answer", "tool_result", "counters"} <= \
        {json.loads(line)["type"] for line in trace.read_text().splitlines()}

    child = _spawn(tmp_path, "--resume")  # the last session, from the checkpointer
    child.expect_exact(PROMPT)
    child.sendeof()  # Ctrl-D quits, saving the session
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    again = _screen((tmp_path / "screen-1.txt").read_text())
    assert "session demo: earlier" in again and "you › label reviews.csv for sentiment" in again
    for text in ("◆ start_labelling", "◆ explain_row", "◆ show_code", "Finished show_code.", "current run:"):
        assert text in again

    replay = _spawn(tmp_path, "--replay", str(trace))
    replay.expect(pexpect.EOF)
    replayed = _screen((tmp_path / "screen-2.txt").read_text())
    assert "◆ start_labelling" in replayed and "rows 40/40" in replayed and "40 rows × 40% hard" in replayed
