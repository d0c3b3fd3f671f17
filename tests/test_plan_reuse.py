"""Time to first label: the embedded model's planning steps are skipped for the deterministic choice,
and a second run on the same request and data reuses the first run's plan (no probe, no smoke test)."""

from __future__ import annotations

import json
import time

import pytest
from fakes import ScriptedChatModel
from test_sandbox import use

from autoannotator.agent.planning import PLAN_CACHE_DIR, WEAK_SKIP_REASON, cached_plan, plan_run, texts_fingerprint
from autoannotator.config import Settings
from autoannotator.task import LabelDef, TaskSpec

TASK = TaskSpec(instruction="label these reviews for sentiment",
                labels=[LabelDef(name="positive"), LabelDef(name="negative")])
TEXTS = ["I love it", "Awful, broke at once", "Great value", "Terrible service, never again", "Works fine",
         "Not worth the money", "Excellent sound", "It stopped working"] * 5


def _never(*_a, **_k):
    raise AssertionError("the weak model's probe labels must not be asked for")


def _plan(root, name: str, texts=TEXTS, **settings):
    cfg = Settings(runs_dir=root / "runs", k=3, **settings)
    chat = ScriptedChatModel([])  # any call to the LLM fails the test: its script is empty
    start = time.perf_counter()
    plan = plan_run(cfg, instruction=TASK.instruction, task=TASK, labels_given=True, task_source="user (--labels)",
                    texts=texts, run_dir=root / name, chat=chat, weak_llm=True, sandbox=use("local"),
                    label_samples=_never)
    return plan, time.perf_counter() - start, chat, cfg


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One deterministic plan (a probe and a smoke test in the sandbox: slow on 2 busy cores), shared."""
    root = tmp_path_factory.mktemp("plans")
    return (root, *_plan(root, "run1"))


def test_the_weak_model_goes_straight_to_the_deterministic_choice(first):
    root, plan, _, chat, _ = first
    assert chat.calls == [] and chat.tool_choices == []  # not one LLM call while planning
    specs = [s["spec"] for s in plan.selection]
    assert specs[-1] == "student" and len(specs) == 3
    assert specs[:2] == ["vader", "textblob"]  # the catalog's ranking, both loaded and covering the labels
    loaded = {c["spec"] for c in plan.probe["candidates"] if c["loaded"]}
    assert set(specs[:2]) <= loaded and all(c["agreement_with_llm"] is None for c in plan.probe["candidates"])
    assert plan.decided_by["selection"].startswith("deterministic")
    assert plan.decided_by["llm"] == f"skipped: {WEAK_SKIP_REASON}"
    assert plan.deployment["final_code"].endswith("v1.py")
    saved = json.loads((root / "run1" / "plan.json").read_text())
    assert any("skipped the LLM" in n for n in saved["notes"])


def test_a_second_run_on_the_same_request_reuses_the_plan(first):
    root, plan, first_s, _, cfg = first
    assert len(list((root / "runs" / PLAN_CACHE_DIR).glob("*.json"))) == 1
    second, second_s, chat, _ = _plan(root, "run2")
    assert chat.calls == []
    assert [s["spec"] for s in second.selection] == [s["spec"] for s in plan.selection]
    assert second.decided_by["plan"].startswith("reused from run run1")
    # No probe and no smoke test this time: the cached program is written into this run's deploy/.
    assert not (root / "run2" / "deploy" / "probe").exists()
    code = root / "run2" / "deploy" / "ensemble" / "v1.py"
    assert second.deployment["final_code"] == str(code)
    assert code.read_text() == (root / "run1" / "deploy" / "ensemble" / "v1.py").read_text()
    assert second_s < first_s
    assert cached_plan(cfg, TASK, texts_fingerprint(TEXTS))["model_specs"] == [s["spec"] for s in plan.selection]


def test_other_data_labels_or_settings_miss_the_cache(first):
    root, _, _, _, cfg = first
    assert cached_plan(cfg, TASK, texts_fingerprint(TEXTS[:-1])) is None
    three = TaskSpec(instruction=TASK.instruction, labels=[*TASK.labels, LabelDef(name="neutral")])
    assert cached_plan(cfg, three, texts_fingerprint(TEXTS)) is None
    assert cached_plan(cfg.model_copy(update={"k": 2}), TASK, texts_fingerprint(TEXTS)) is None
    off, _, _, _ = _plan(root, "run3", texts=TEXTS[:-1], reuse_plans=False)
    assert "plan" not in off.decided_by and (root / "run3" / "deploy" / "probe").exists()
    # reuse_plans=False neither reads nor writes the cache
    assert cached_plan(cfg, TASK, texts_fingerprint(TEXTS[:-1])) is None


def test_a_corrupt_cache_entry_is_a_miss(first, tmp_path):
    root, _, _, _, cfg = first
    copy = cfg.model_copy(update={"runs_dir": tmp_path / "runs"})
    (tmp_path / "runs" / PLAN_CACHE_DIR).mkdir(parents=True)
    for entry in (root / "runs" / PLAN_CACHE_DIR).glob("*.json"):
        (tmp_path / "runs" / PLAN_CACHE_DIR / entry.name).write_text("{not json")
    assert cached_plan(copy, TASK, texts_fingerprint(TEXTS)) is None
