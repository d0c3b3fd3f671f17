"""A run keeps its LLM for life: the pure rule (the end-to-end resume test is in test_resume_llm.py)."""

from __future__ import annotations

import pytest

from autoannotator.errors import UserError
from autoannotator.llm.identity import LLMRecord, identity_of, resume_llm

A = identity_of("http://127.0.0.1:1/v1/", "model-a")
B = identity_of("http://127.0.0.1:2/v1", "model-b")
EMB = identity_of(None, None, embedded_model="SmolLM2.gguf")


def test_saying_nothing_keeps_the_runs_llm():
    rec = LLMRecord(identity=A)
    assert resume_llm(rec, None, switch=False, run_id="r") == (rec, None)


def test_same_llm_is_fine_trailing_slash_aside():
    rec = LLMRecord(identity=A)
    assert resume_llm(rec, identity_of("http://127.0.0.1:1/v1", "model-a"), switch=False, run_id="r")[0] is rec


@pytest.mark.parametrize("other", [B, EMB, identity_of("http://127.0.0.1:1/v1", "model-b")])
def test_another_llm_is_refused_in_one_line(other):
    with pytest.raises(UserError) as info:
        resume_llm(LLMRecord(identity=A), other, switch=False, run_id="r1")
    msg = str(info.value)
    assert "model-a@http://127.0.0.1:1/v1" in msg and other.label in msg and "--switch-llm" in msg
    assert "\n" not in msg


def test_switch_records_both():
    rec, note = resume_llm(LLMRecord(identity=EMB, settings={"llm_max_text_chars": 4000}), B, switch=True,
                           run_id="r")
    assert rec.identity == B and rec.settings == {"llm_max_text_chars": 4000}
    assert rec.all_labels() == ["embedded:SmolLM2.gguf", "model-b@http://127.0.0.1:2/v1"]
    assert "embedded:SmolLM2.gguf" in note and "model-b" in note


def test_old_run_without_a_record_adopts_the_requested_one():
    assert resume_llm(None, A, switch=False, run_id="r")[0].identity == A
    assert resume_llm(None, None, switch=False, run_id="r") == (None, None)
