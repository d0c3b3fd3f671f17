"""Bad input through the real command line: one clear line on stderr, no traceback, a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "autoannotator.cli.app", "label"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "COLUMNS": "200"})


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("content", "args", "needles"),
    [
        ("", [], ["no rows"]),
        ("text,label\n", [], ["no rows"]),
        ("text,label\nhello,positive\n", ["--text-column", "nope"], ["nope"]),
        ("text,label\nhello,positive\n", ["--gold-column", "gold"], ["gold"]),
    ],
)
def test_bad_data_gives_one_line(tmp_path, content, args, needles):
    data = tmp_path / "d.csv"
    data.write_text(content, encoding="utf-8")
    proc = _run([str(data), "--task", "sentiment", "--labels", "positive,negative", "--run-dir",
                 str(tmp_path / "run"), *args], tmp_path)
    _assert_one_line_error(proc, *needles)


def test_missing_file_and_missing_task(tmp_path):
    _assert_one_line_error(_run([str(tmp_path / "none.csv"), "--task", "x", "--labels", "a,b"], tmp_path), "none.csv")
    data = tmp_path / "d.csv"
    data.write_text("text\nhello\n", encoding="utf-8")
    _assert_one_line_error(_run([str(data)], tmp_path), "--task")


def test_unreachable_llm_endpoint(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text\nhello\n", encoding="utf-8")
    proc = _run([str(data), "--task", "sentiment", "--labels", "positive,negative", "--llm-base-url",
                 "http://127.0.0.1:9/v1", "--llm-model", "x", "--run-dir", str(tmp_path / "run")], tmp_path)
    _assert_one_line_error(proc, "127.0.0.1:9")


def test_bad_setting_and_resume_of_nothing(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text\nhello\n", encoding="utf-8")
    _assert_one_line_error(_run([str(data), "--task", "x", "--labels", "a,b", "--k", "0"], tmp_path), "k")
    _assert_one_line_error(_run(["--resume", str(tmp_path / "nowhere")], tmp_path), "run.json")
    _assert_one_line_error(_run([str(data), "--task", "x", "--labels", "a"], tmp_path), "label")
    for bad in ("abc", "1.5"):
        _assert_one_line_error(_run([str(data), "--task", "x", "--labels", "a,b", "--target-accuracy", bad],
                                    tmp_path), "target_accuracy")


def test_resume_flag_alone_takes_the_run_dir(tmp_path):
    proc = _run(["--run-dir", str(tmp_path / "elsewhere"), "--resume"], tmp_path)
    _assert_one_line_error(proc, "elsewhere", "run.json")
