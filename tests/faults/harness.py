"""Shared pieces of the end-to-end fault cases: a small labelled file, the CLI in-process or as a real
process, and the checks every case makes (each row exactly once, no prompt answered twice)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections import Counter
from contextlib import redirect_stderr
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POS = ["great", "wonderful", "loved it", "excellent", "happy", "nice"]
NEG = ["terrible", "awful", "hated it", "bad", "sad", "horrible"]
LABELS = "positive,negative,neutral"


def write_data(path: Path, n: int = 24) -> Path:
    """``n`` rows; every third mixes praise and complaint, so the lexicons disagree and the LLM is asked."""
    rows = []
    for i in range(n):
        a, b = POS[i % len(POS)], NEG[(i // 2) % len(NEG)]
        kind = i % 3
        text = {0: f"row {i}: {a}, {a}", 1: f"row {i}: {b}, really {b}", 2: f"row {i}: {a} but {b}"}[kind]
        rows.append({"text": text, "gold": ["positive", "negative", "neutral"][kind]})
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["text", "gold"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def gold_of(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8") as f:
        return {r["text"]: r["gold"] for r in csv.DictReader(f)}


def label_args(data: Path, run_dir: Path, endpoint, *extra: str) -> list[str]:
    return ["label", str(data), "--task", "sentiment of the reviews", "--labels", LABELS,
            "--models", "vader,textblob,afinn", "--sandbox", "none", "--batch-size", "8",
            "--gold-column", "gold", "--llm-base-url", endpoint.base_url, "--llm-model", endpoint.model,
            "--run-dir", str(run_dir), "-q", *extra]


# The paper's routing sends every disagreement to the LLM: the faults need requests to happen on.
FAST_ENV = {"AUTOANNOTATOR_LLM_BACKOFF_BASE_S": "0.01", "AUTOANNOTATOR_LLM_TIMEOUT_S": "1.5",
            "AUTOANNOTATOR_LLM_MAX_RETRIES": "4", "AUTOANNOTATOR_ROUTING": "paper"}


def cli_inprocess(args: list[str], monkeypatch) -> tuple[int, str]:
    """Run ``autoannotator ARGS`` in this process: (exit code, stderr)."""
    from autoannotator.cli.app import main

    for k, v in FAST_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", ["autoannotator", *args])
    err = io.StringIO()
    code = 0
    with redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def cli_process(args: list[str], env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """``autoannotator ARGS`` as a real process (for kills and signals)."""
    full = {**os.environ, **FAST_ENV, "PYTHONPATH": str(ROOT), **(env or {})}
    code = "import sys; from autoannotator.cli.app import main; sys.argv[0] = 'autoannotator'; main()"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def output_rows(run_dir: Path) -> list[dict[str, str]]:
    plan = json.loads((run_dir / "run.json").read_text())
    with open(plan["out_path"], encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_each_row_once(run_dir: Path, data: Path) -> list[dict[str, str]]:
    rows = output_rows(run_dir)
    with open(data, encoding="utf-8") as f:
        inputs = [r["text"] for r in csv.DictReader(f)]
    assert [r["text"] for r in rows] == inputs, "every input row exactly once, in order"
    return rows


def assert_no_prompt_answered_twice(endpoint) -> None:
    twice = {h: n for h, n in endpoint.answered().items() if n > 1}
    assert not twice, f"prompts answered more than once: {twice}"


def one_line_error(stderr: str) -> str:
    """The final message (rich wraps long lines at the console width: they are joined back)."""
    assert "internal error" not in stderr and "Traceback" not in stderr, stderr
    starts = [stderr.rfind(p) for p in ("error:", "terminated", "interrupted")]
    start = max(starts)
    assert start >= 0, f"no message in {stderr!r}"
    return " ".join(stderr[start:].split())


def sources(rows: list[dict[str, str]]) -> Counter:
    return Counter(r["label_source"] for r in rows)
