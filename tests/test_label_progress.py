"""The label command's progress lines say why a fine-tuned student does not vote yet."""

from __future__ import annotations

from rich.console import Console

from autoannotator.cli.progress import LabelProgress


def _screen(record: dict) -> str:
    console = Console(record=True, width=200)
    LabelProgress(console)({"event": "finetune_done", "model": "student", "round": 1, "accepted": True,
                            "seconds": 1.0, "holdout_balanced_acc_before": 0.0, **record})
    return console.export_text()


def test_a_student_below_the_bar_is_told_what_it_needs():
    screen = _screen({"votes": False, "holdout_balanced_acc_after": 0.58, "holdout_chance": 0.5,
                      "holdout_required": 0.62})
    assert "held-out balanced accuracy 0.0 -> 0.58: kept" in screen
    assert "not voting yet: needs 0.62 balanced accuracy, 0.5 is chance" in screen


def test_a_single_label_slice_is_named_as_the_reason():
    screen = _screen({"votes": False, "holdout_balanced_acc_after": 1.0, "holdout_chance": 1.0,
                      "holdout_required": 1.05})
    assert "the held-out slice holds a single label" in screen


def test_a_voting_student_gets_no_excuse():
    screen = _screen({"votes": True, "holdout_balanced_acc_after": 0.8, "holdout_chance": 0.5,
                      "holdout_required": 0.6})
    assert "kept" in screen and "not voting" not in screen
