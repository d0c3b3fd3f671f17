"""The human verifier: keys, skip, undo, quit, its answer cache, and a quit-then-resume run that never re-asks."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from autoannotator import runner
from autoannotator.verify.human import HumanVerifier, human_hooks, used_human
from autoannotator.cli.app import app
from autoannotator.config import Settings
from autoannotator.errors import UserError
from autoannotator.task import LabelDef, TaskSpec, parse_labels

REPO = Path(__file__).resolve().parents[1]
TASK = TaskSpec(instruction="sentiment", labels=[LabelDef(name="positive"), LabelDef(name="negative")])
ITEMS = [(0, "great film"), (1, "awful film"), (2, "hm, a film"), (3, "a film, I guess")]


def _human(tmp_path: Path, script: str, task: TaskSpec = TASK, **kw) -> tuple[HumanVerifier, io.StringIO]:
    screen = io.StringIO()
    verifier = HumanVerifier(task, tmp_path / "llm_cache.sqlite", "run-1", input=io.StringIO(script),
                             console=Console(file=screen, width=120), **kw)
    return verifier, screen


def _table(tmp_path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(tmp_path / "llm_cache.sqlite") as conn:
        return conn.execute(sql).fetchall()


def test_numbers_letters_names_skip_undo_and_the_skipped_twice_row(tmp_path):
    # "u" is typed at the next question and takes back the answer (or skip) given to the previous one.
    script = "\n".join([
        "1",         # row 0 -> positive (number)
        "n",         # row 1 -> negative (first letter)
        "s",         # row 2 skipped: it will come back at the end of the batch
        "u",         # (asked row 3) undo the skip: row 2 again
        "what?",     # not understood: the same question again
        "s",         # row 2 skipped once more
        "NEGATIVE",  # row 3 -> negative (full name, any case)
        "u",         # (asked row 2's second chance) undo row 3's answer: row 3 again
        "p",         # row 3 -> positive
        "s",         # row 2, second chance, skipped again: left to the models' majority
    ]) + "\n"
    verifier, screen = _human(tmp_path, script)
    results = verifier.verify(ITEMS)

    assert [(r.row_id, r.label) for r in results] == [(0, "positive"), (1, "negative"), (3, "positive")]
    assert all(not r.cached and r.tokens_in == r.tokens_out == 0 and r.paid_by_run == "run-1" for r in results)
    assert verifier.asked == [0, 1, 2, 3, 2, 3, 2, 3, 2]
    assert "skipped once" in screen.getvalue() and "what?" in screen.getvalue()
    stored = sorted(_table(tmp_path, "SELECT model_id, label FROM verify_cache"))
    assert stored == [("human", "negative"), ("human", "positive"), ("human", "positive")]  # undo removed row 3's first
    assert _table(tmp_path, "SELECT row_id FROM human_skipped") == [(2,)]
    assert verifier.ledger().calls == 3 and verifier.ledger().tokens_in == 0
    assert used_human(tmp_path / "llm_cache.sqlite")

    # A new session over the same cache asks nothing: empty input would mean "quit" if it did ask.
    again, _ = _human(tmp_path, "")
    replay = again.verify(ITEMS)
    assert again.asked == []
    assert [(r.row_id, r.label, r.cached) for r in replay] == [(0, "positive", True), (1, "negative", True),
                                                                (3, "positive", True)]


def test_quit_raises_keyboard_interrupt_and_keeps_the_answers_given(tmp_path):
    verifier, screen = _human(tmp_path, "2\nq\n")
    with pytest.raises(KeyboardInterrupt):
        verifier.verify(ITEMS)
    assert f"runs resume {tmp_path}" in screen.getvalue().replace("\n", "")
    assert _table(tmp_path, "SELECT label FROM verify_cache") == [("negative",)]

    resumed, _ = _human(tmp_path, "1\n1\n1\n")
    results = resumed.verify(ITEMS)
    assert resumed.asked == [1, 2, 3]  # row 0 was answered before the quit
    assert [r.label for r in results] == ["negative", "positive", "positive", "positive"]
    assert results[0].cached and not any(r.cached for r in results[1:])


def test_end_of_input_is_a_quit_and_undo_at_batch_start_does_nothing(tmp_path):
    verifier, screen = _human(tmp_path, "u\n")
    with pytest.raises(KeyboardInterrupt):
        verifier.verify(ITEMS[:1])
    assert "nothing to undo" in screen.getvalue()


def test_letter_shortcuts_only_when_unambiguous_and_not_a_command(tmp_path):
    labels = ["spam", "ham", "hot", "urgent", "normal", "Other"]
    task = TaskSpec(instruction="triage", labels=[LabelDef(name=n) for n in labels])
    verifier, screen = _human(tmp_path, "n\no\nspam\n6\n", task=task)
    # s, u, q are commands; h is shared by two labels: only n and o are shortcuts.
    assert verifier._by_letter == {"n": "normal", "o": "Other"}
    results = verifier.verify([(0, "a"), (1, "b"), (2, "c"), (3, "d")])
    assert [r.label for r in results] == ["normal", "Other", "spam", "Other"]
    assert "[1] spam" in screen.getvalue() and "(n)" in screen.getvalue()


def test_hints_show_the_slm_votes_and_duplicate_texts_are_asked_once(tmp_path):
    votes = {"votes": {"vader": {"label": "positive", "p": 0.8}, "textblob": {"label": None, "p": None}},
             "uncertainty": 0.5}
    verifier, screen = _human(tmp_path, "2\n", hints=lambda row_id: votes if row_id == 7 else None)
    results = verifier.verify([(7, "same text"), (9, "same text")])
    assert verifier.asked == [7]
    assert [(r.row_id, r.label, r.cached) for r in results] == [(7, "negative", False), (9, "negative", True)]
    shown = screen.getvalue()
    assert "vader → positive (0.80)" in shown and "textblob → abstains" in shown and "U 0.500" in shown

    verifier.set_hints({11: {"votes": {"afinn": {"label": "negative", "p": 0.6}}}})  # the graph's hook
    verifier._input = io.StringIO("1\n")
    verifier.verify([(11, "other text")])
    assert "afinn → negative (0.60)" in screen.getvalue()


def test_human_hooks_choice_and_resume_detection(tmp_path):
    console = Console(file=io.StringIO())
    assert human_hooks("llm", None, console) == {}
    assert human_hooks(None, tmp_path, console) == {}  # no answers yet: a resume keeps the LLM
    hooks = human_hooks("human", None, console)
    assert hooks["verifier_info"] == {"human": True}
    assert isinstance(hooks["verifier_factory"](TASK, tmp_path, "r"), HumanVerifier)
    _human(tmp_path, "1\n")[0].verify(ITEMS[:1])
    assert "verifier_factory" in human_hooks(None, tmp_path, console)
    with pytest.raises(UserError, match="llm or human"):
        human_hooks("robot", None, console)


# --- whole runs ------------------------------------------------------------------------------------

def _data(tmp_path: Path, n: int = 40) -> Path:
    path = tmp_path / "reviews.csv"
    pd.read_csv(REPO / "examples" / "reviews.csv", dtype=str, keep_default_na=False).head(n).to_csv(path, index=False)
    return path


def test_run_quit_midway_then_resume_asks_only_what_was_not_answered(tmp_path):
    data = _data(tmp_path)
    settings = Settings(models=["vader", "textblob"], beta=100_000, batch_size=8, runs_dir=tmp_path / "runs",
                        routing="paper", audit=0)  # the paper rule: every asked row is verified, none audited
    sessions: list[HumanVerifier] = []

    def factory(script: str):
        def make(task, run_dir, run_id):
            sessions.append(HumanVerifier(task, run_dir / "llm_cache.sqlite", run_id, input=io.StringIO(script),
                                          console=Console(file=io.StringIO())))
            return sessions[-1]
        return make

    with pytest.raises(KeyboardInterrupt):
        runner.label(settings, data, instruction="label these reviews for sentiment",
                     labels=parse_labels("positive,negative"), gold_column="label", run_dir=tmp_path / "run",
                     verifier_factory=factory("1\n2\n1\nq\n"), verifier_info={"human": True})
    first = sessions[0].asked
    assert len(first) == 4  # three answers, then the quit on the fourth

    report, run_dir = runner.label(settings, None, run_dir=tmp_path / "run", resume=True,
                                   verifier_factory=factory("1\n" * 60), verifier_info={"human": True})
    second = sessions[1].asked
    assert not set(first[:3]) & set(second) and second[0] == first[3]

    out = pd.read_csv(run_dir / "reviews.labelled.csv", dtype=str, keep_default_na=False)
    verified = out[out["label_source"] == "llm_verified"]
    assert sorted(verified.index) == sorted(first[:3] + second)
    assert out.loc[first[0], "label"] == "positive" and out.loc[first[1], "label"] == "negative"
    assert report["llm"]["model_id"] == "human" and report["llm"]["human"] is True
    assert report["llm_calls"] == len(verified) and report["llm_tokens_in"] == 0 and report["est_cost_usd"] == 0


def test_label_cli_with_human_verifier(tmp_path):
    data = _data(tmp_path, 24)
    result = CliRunner().invoke(app, [
        "label", str(data), "--task", "label these reviews for sentiment", "--labels", "positive,negative",
        "--models", "vader,textblob", "--beta", "100000", "--batch-size", "8", "--verifier", "human",
        "--gold-column", "label", "--run-dir", str(tmp_path / "run"), "--quiet"], input="2\n" * 24)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["llm"]["model_id"] == "human" and report["llm_calls"] > 0
    assert "hard sample 1 of" in result.output
    out = pd.read_csv(tmp_path / "run" / "reviews.labelled.csv", dtype=str, keep_default_na=False)
    assert set(out.loc[out["label_source"] == "llm_verified", "label"]) == {"negative"}

    bad = CliRunner().invoke(app, ["label", str(data), "--task", "x", "--labels", "a,b", "--verifier", "robot"])
    assert isinstance(bad.exception, UserError)
