"""What users expect of a command line: --version, documented exit codes, no control codes off a terminal
or under NO_COLOR, and a JSON log format for pipelines."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from autoannotator import __version__
from autoannotator.cli.logs import JsonEvents, TextEvents

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "autoannotator.cli.app"]


def _run(args, **kw):
    return subprocess.run(CLI + args, capture_output=True, text=True, cwd=kw.pop("cwd", REPO), timeout=120, **kw)


def test_version():
    proc = _run(["--version"])
    assert proc.returncode == 0 and proc.stdout.strip() == f"autoannotator {__version__}"


def test_user_error_exits_2_with_one_plain_line(tmp_path):
    proc = _run(["label", str(tmp_path / "missing.csv"), "--task", "x", "--labels", "a,b"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "\x1b" not in proc.stderr and "Traceback" not in proc.stderr  # not a TTY: no control codes
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_usage_error_exits_2():
    assert _run(["label", "--no-such-flag"]).returncode == 2
    assert _run(["label", "x.csv", "--task", "t", "--log-format", "yaml"]).returncode == 2


def _on_a_terminal(args, env) -> str:
    main, sub = pty.openpty()
    subprocess.run(CLI + args, stdin=sub, stdout=sub, stderr=sub, cwd=REPO, timeout=120,
                   env={**os.environ, "TERM": "xterm-256color", **env})
    os.close(sub)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    return out.decode(errors="replace")


def test_no_color_on_a_terminal():
    args = ["label", "missing.csv", "--task", "x", "--labels", "a,b"]
    sgr = re.compile(r"\x1b\[[0-9;]*m")  # colour and style; the live bar's cursor codes are a terminal's due
    coloured = _on_a_terminal(args, {})
    assert sgr.search(coloured)  # a terminal gets colour...
    plain = _on_a_terminal(args, {"NO_COLOR": "1"})
    assert "error: data file not found" in plain and not sgr.search(plain)  # ...unless NO_COLOR says otherwise


def test_json_events_are_one_object_per_line():
    stream = io.StringIO()
    sink = JsonEvents(stream)
    sink({"event": "start", "n_rows": 3, "run_dir": Path("/tmp/r")})
    sink({"event": "accepted", "n": 3, "llm": 1})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["start", "accepted"] and lines[0]["run_dir"] == "/tmp/r"
    assert all("ts" in e for e in lines)


def test_text_events_show_the_estimate_and_verbose_detail():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    quiet = TextEvents(console, quiet=True, verbose=False)
    quiet({"event": "estimate", "lines": ["LLM calls: 12"]})
    assert buf.getvalue() == ""
    loud = TextEvents(console, quiet=False, verbose=True)
    loud({"event": "estimate", "lines": ["LLM calls: 12 (range 8-15)"]})
    loud({"event": "llm", "tool_calls": ["probe_models"], "content": ""})
    text = buf.getvalue()
    assert "LLM calls: 12 (range 8-15)" in text and "probe_models" in text and "\x1b" not in text
