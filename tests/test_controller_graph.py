"""The controller loop on scripted models: free tool choice, forced steps for weak models, errors, fallbacks."""

from __future__ import annotations

from pathlib import Path

from fakes import ScriptedChatModel
from langchain_core.messages import AIMessage
from pydantic import BaseModel

from autoannotator.config import Settings
from autoannotator.graphs.controller import (
    PHASES,
    ControllerContext,
    PlanDraft,
    must_force,
    next_phase,
    route_after_agent,
    run_controller,
)
from autoannotator.task import LabelDef, TaskSpec
from autoannotator.tools.base import ToolException, make_tool
from autoannotator.tools.registry import ToolRegistry


class Args(BaseModel):
    x: str = ""


class Out(BaseModel):
    ok: bool = True
    candidates: list[dict] = []
    mode: str = "offline"


def _registry(fail: set[str] = frozenset()) -> tuple[ToolRegistry, list[str]]:
    calls: list[str] = []
    reg = ToolRegistry()
    for phase in PHASES:
        def run(args: Args, phase=phase) -> Out:
            calls.append(phase)
            if phase in fail:
                raise ToolException(f"{phase} failed on purpose")
            found = {"search_models": [{"spec": "vader", "id": "vader"}],
                     "probe_models": [{"spec": "vader", "loaded": True}]}
            return Out(candidates=found.get(phase, []))
        reg.register(make_tool(run, name=phase, description=phase, args_schema=Args, result_model=Out),
                     source="builtin")
    return reg, calls


def _call(name: str, i: int) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": {"x": "go"}, "id": f"c{i}", "type": "tool_call"}])


def _context(chat, reg, weak: bool, filled: list) -> ControllerContext:
    task = TaskSpec(instruction="sentiment", labels=[LabelDef(name="positive"), LabelDef(name="negative")])
    plan = PlanDraft(instruction="label these reviews for sentiment", task=task, labels_given=True)
    return ControllerContext(settings=Settings(), run_dir=Path("."), plan=plan, samples=["great"], n_rows=1,
                             chat=chat, weak_llm=weak, registry=reg, hints=lambda phase, plan: f"hint {phase}",
                             fallbacks=lambda plan: filled.append(True))


def test_routers_are_pure():
    assert next_phase({"done": [], "attempts": {}}) == PHASES[0]
    assert next_phase({"done": ["define_task"], "attempts": {"search_models": 2}}) == "read_model_card"
    assert next_phase({"done": list(PHASES), "attempts": {}}) is None
    assert route_after_agent({"messages": [_call("x", 0)], "done": []}) == "tools"
    assert route_after_agent({"messages": [AIMessage("prose")], "done": []}) == "agent"
    assert route_after_agent({"messages": [AIMessage("prose")], "done": list(PHASES)}) == "finish"
    assert must_force({"messages": [AIMessage("prose")]}, weak_llm=False)
    assert not must_force({"messages": [_call("x", 0)]}, weak_llm=False)
    assert must_force({"messages": []}, weak_llm=True)


def test_strong_model_chooses_freely():
    reg, calls = _registry()
    chat = ScriptedChatModel([_call(p, i) for i, p in enumerate(PHASES)])
    filled: list = []
    plan = run_controller(_context(chat, reg, weak=False, filled=filled))
    chat.assert_complete()
    assert calls == list(PHASES)
    assert set(chat.tool_choices) == {None}  # never forced
    assert plan.candidates == [{"spec": "vader", "id": "vader"}] and filled == [True]


def test_weak_model_is_forced_step_by_step():
    reg, calls = _registry()
    chat = ScriptedChatModel([_call(p, i) for i, p in enumerate(PHASES)])
    run_controller(_context(chat, reg, weak=True, filled=[]))
    chat.assert_complete()
    assert chat.tool_choices == list(PHASES)
    # the weak model sees a short prompt: system + one step message, never the tool history
    assert all(len(msgs) == 2 for msgs in chat.calls)


def test_prose_answer_then_forced_and_failures_fall_back():
    reg, calls = _registry(fail={"probe_models"})
    script = [AIMessage("I will now think about sentiment."), _call("define_task", 0), _call("search_models", 1),
              _call("read_model_card", 2), _call("probe_models", 3), _call("probe_models", 4),
              _call("select_models", 5), _call("write_deployment_code", 6)]
    chat = ScriptedChatModel(script)
    filled: list = []
    run_controller(_context(chat, reg, weak=False, filled=filled))
    chat.assert_complete()
    assert chat.tool_choices[1] == "define_task"  # forced after the prose answer
    assert calls.count("probe_models") == 2  # MAX_ATTEMPTS, then the step is left to the fallback
    assert calls[-1] == "write_deployment_code" and filled == [True]


def test_an_llm_error_costs_one_attempt_not_the_plan():
    from fakes import timeout_error

    reg, calls = _registry()
    script = [timeout_error(), timeout_error(), *[_call(p, i) for i, p in enumerate(PHASES[1:])]]
    chat = ScriptedChatModel(script)
    filled: list = []
    run_controller(_context(chat, reg, weak=True, filled=filled))
    chat.assert_complete()
    assert "define_task" not in calls  # two failed attempts: left to the fallback
    assert calls == list(PHASES[1:]) and filled == [True]


def test_a_probe_that_loads_nothing_is_not_done():
    from autoannotator.graphs.controller import _capture

    plan = _context(ScriptedChatModel([]), _registry()[0], weak=True, filled=[]).plan
    assert not _capture(plan, "probe_models", {"candidates": [{"spec": "hf:},", "loaded": False}]})
    assert _capture(plan, "probe_models", {"candidates": [{"spec": "vader", "loaded": True}]})
