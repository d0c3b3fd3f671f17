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


def _plan(**kw):
    from autoannotator.run.plan import RunPlan
    from autoannotator.task import LabelDef, TaskSpec

    task = TaskSpec(instruction="x", labels=[LabelDef(name="a"), LabelDef(name="b")])
    return RunPlan(run_id="r", created_at="now", data_path="d", data_fingerprint="f", gold_column=None,
                   out_path="o", task=task, model_specs=[], settings={}, **kw)


def test_embedded_run_resumes_embedded_and_endpoint_run_resumes_its_endpoint():
    from autoannotator.config import Settings
    from autoannotator.run.plan import record_llm, settings_for_resume

    plan = _plan()
    record_llm(plan, base_url="http://127.0.0.1:5555/v1", model_id="embedded:SmolLM2.gguf", embedded=True,
               settings=Settings())
    assert plan.llm.identity.label == "embedded:SmolLM2.gguf"
    s, note = settings_for_resume(plan, Settings(), switch_llm=False)
    assert s.llm_base_url is None and s.uses_embedded_llm and note is None

    plan = _plan()
    record_llm(plan, base_url="http://127.0.0.1:9/v1", model_id="m@http://127.0.0.1:9/v1", embedded=False,
               settings=Settings(llm_max_text_chars=1234))
    s, _ = settings_for_resume(plan, Settings(), switch_llm=False)  # nothing said: the run's endpoint
    assert (s.llm_base_url, s.llm_model, s.llm_max_text_chars) == ("http://127.0.0.1:9/v1", "m", 1234)
    with pytest.raises(UserError, match="embedded|switch-llm"):
        settings_for_resume(plan, Settings(llm_base_url="http://127.0.0.1:10/v1", llm_model="m"), switch_llm=False)
