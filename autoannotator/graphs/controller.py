"""The meta-controller: the LLM turns the request into a plan by calling tools, in a LangGraph loop.

    START -> agent -(tool call?)-> tools -> record -(plan complete?)-> agent | finish -> END
                   \\-(no call, plan incomplete)-> agent (now forced to call the next step's tool)

A strong model chooses its tools freely. A model that never volunteers a call (the embedded 135M
one) is forced, step by step, to call the next missing step's tool (``tool_choice``), with a short
prompt that lists what it may choose from. Whatever the LLM leaves undone or gets wrong after
``MAX_ATTEMPTS`` tries, ``finish`` decides deterministically (search offline, rank by probe, vetted
template) and ``plan.json`` records who decided what.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode

from autoannotator.config import Settings
from autoannotator.prompts import render
from autoannotator.sandbox.base import Sandbox
from autoannotator.slm.base import SLM
from autoannotator.task import TaskSpec
from autoannotator.tools.registry import ToolRegistry

PHASES = ("define_task", "search_models", "read_model_card", "probe_models", "select_models",
          "write_deployment_code")
MAX_ATTEMPTS = 2
MAX_TURNS = 16
TOOL_RESULT_CHARS = 2500
WEAK_MAX_TOKENS = 256  # what a strong model sees of each tool result in its history


@dataclass
class PlanDraft:
    instruction: str
    task: TaskSpec
    labels_given: bool
    candidates: list[dict] = field(default_factory=list)
    cards: dict[str, dict] = field(default_factory=dict)
    probe: dict | None = None
    selection: list[dict] = field(default_factory=list)
    deployment: dict | None = None
    decided_by: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "task": self.task.model_dump(), "labels_given": self.labels_given,
                "candidates": self.candidates, "cards": self.cards, "probe": self.probe,
                "selection": self.selection, "deployment": self.deployment, "decided_by": self.decided_by,
                "notes": self.notes}


class ControllerState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    done: list[str]
    attempts: dict[str, int]
    turns: int


# -- pure routers -------------------------------------------------------------------------------
def next_phase(state: ControllerState) -> str | None:
    """The first step neither done nor given up on (``MAX_ATTEMPTS`` failed calls)."""
    done, attempts = set(state.get("done", [])), state.get("attempts", {})
    return next((p for p in PHASES if p not in done and attempts.get(p, 0) < MAX_ATTEMPTS), None)


def route_after_agent(state: ControllerState) -> Literal["tools", "agent", "finish"]:
    last = state["messages"][-1] if state.get("messages") else None
    if isinstance(last, AIMessage) and last.tool_calls:
        return "tools"
    if next_phase(state) is None or state.get("turns", 0) >= MAX_TURNS:
        return "finish"
    return "agent"


def route_after_record(state: ControllerState) -> Literal["agent", "finish"]:
    if next_phase(state) is None or state.get("turns", 0) >= MAX_TURNS:
        return "finish"
    return "agent"


def must_force(state: ControllerState, weak_llm: bool) -> bool:
    """Force the next tool for a weak model, or for any model whose last answer called none."""
    last = state["messages"][-1] if state.get("messages") else None
    return weak_llm or (isinstance(last, AIMessage) and not last.tool_calls)


# -- the graph ----------------------------------------------------------------------------------
@dataclass
class ControllerContext:
    settings: Settings
    run_dir: Path
    plan: PlanDraft
    samples: list[str]
    n_rows: int
    chat: BaseChatModel
    weak_llm: bool
    registry: ToolRegistry | None  # the plan tools, bound to this context (set once it exists)
    hints: Callable[[str, PlanDraft], str]  # step -> what the LLM may choose from
    fallbacks: Callable[[PlanDraft], None]  # fills whatever the LLM left undone
    on_event: Callable[[dict], None] = lambda event: None
    sandbox: Sandbox | None = None  # where probes and the deployment smoke test run
    build_model: Callable[[str], SLM] | None = None  # spec -> SLM, for checking a selection
    label_samples: Callable[[TaskSpec, list[str]], list[str]] | None = None  # the LLM's own labels
    _llm_labels: tuple[tuple[str, ...], list[str]] | None = None

    @property
    def llm_labels(self) -> list[str] | None:
        """The LLM's labels of the probe samples under the current label set (asked once per set)."""
        if self.label_samples is None:
            return None
        key = tuple(self.plan.task.label_names)
        if self._llm_labels is None or self._llm_labels[0] != key:
            self._llm_labels = (key, self.label_samples(self.plan.task, self.samples))
        return self._llm_labels[1]


def _system(ctx: ControllerContext) -> SystemMessage:
    return SystemMessage(render(
        "controller_system.md", instruction=ctx.plan.instruction, n_rows=ctx.n_rows,
        text_column=ctx.plan.task.text_column, samples=[s[:200] for s in ctx.samples[:5]],
        labels_given=ctx.plan.labels_given, label_names=ctx.plan.task.label_names, k=ctx.settings.k))


def progress_lines(state: ControllerState, plan: PlanDraft) -> list[str]:
    lines = [f"labels: {', '.join(plan.task.label_names)}"]
    if plan.candidates:
        lines.append("candidates: " + ", ".join(c["spec"] for c in plan.candidates[:10]))
    if plan.cards:
        lines.append("cards read: " + ", ".join(plan.cards))
    if plan.selection:
        lines.append("selected: " + ", ".join(s["spec"] for s in plan.selection))
    for phase, n in state.get("attempts", {}).items():
        if phase not in state.get("done", []):
            lines.append(f"{phase}: {n} failed attempt(s)")
    return lines


def _trim(messages: list[AnyMessage]) -> list[AnyMessage]:
    out = []
    for m in messages:
        if isinstance(m, ToolMessage) and isinstance(m.content, str) and len(m.content) > TOOL_RESULT_CHARS:
            m = m.model_copy(update={"content": m.content[:TOOL_RESULT_CHARS] + " …(truncated)"})
        out.append(m)
    return out


def build_controller_graph(ctx: ControllerContext, checkpointer=None):
    tools = ctx.registry.tools()

    def agent(state: ControllerState) -> dict:
        phase = next_phase(state)
        if must_force(state, ctx.weak_llm) and phase is not None:
            model = ctx.chat.bind_tools([ctx.registry.get(phase)], tool_choice=phase)
            if ctx.weak_llm:  # a small model rambles inside string fields; cap what one step may cost
                model = model.bind(max_tokens=WEAK_MAX_TOKENS)
            step = render("controller_step.md", progress=progress_lines(state, ctx.plan), tool=phase,
                          hint=ctx.hints(phase, ctx.plan))
            # A weak model gets a short prompt, not the whole history: it fits its context and its attention.
            prompt = [_system(ctx), HumanMessage(step)] if ctx.weak_llm else \
                [_system(ctx), *_trim(state.get("messages", [])), HumanMessage(step)]
        else:
            model = ctx.chat.bind_tools(tools)
            prompt = [_system(ctx), *_trim(state.get("messages", []))]
        forced = phase if must_force(state, ctx.weak_llm) else None
        update: dict[str, Any] = {"turns": state.get("turns", 0) + 1}
        try:
            reply = model.invoke(prompt)
        except Exception as exc:  # a timeout or a refusal costs this step one attempt, not the whole plan
            reply = AIMessage(f"(the LLM call failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            if phase is not None:
                update["attempts"] = {**state.get("attempts", {}), phase: state.get("attempts", {}).get(phase, 0) + 1}
        ctx.on_event({"event": "llm", "tool_calls": [c["name"] for c in getattr(reply, "tool_calls", [])],
                      "forced": forced, "content": reply.content if not reply.tool_calls else ""})
        return {"messages": [reply], **update}

    def record(state: ControllerState) -> dict:
        done, attempts = list(state.get("done", [])), dict(state.get("attempts", {}))
        results = []
        for msg in reversed(state["messages"]):
            if not isinstance(msg, ToolMessage):
                break
            results.append(msg)
        for msg in reversed(results):
            name = msg.name or ""
            attempts[name] = attempts.get(name, 0) + 1
            ok = msg.status != "error"
            payload = _json(msg.content) if ok else None
            if ok and payload is not None:
                ok = _capture(ctx.plan, name, payload)
            if ok and name not in done:
                done.append(name)
            ctx.on_event({"event": "tool", "name": name, "ok": ok, "content": msg.content})
        return {"done": done, "attempts": attempts}

    def finish(state: ControllerState) -> dict:
        ctx.fallbacks(ctx.plan)
        return {}

    graph = StateGraph(ControllerState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_node("record", record)
    graph.add_node("finish", finish)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route_after_agent, ["tools", "agent", "finish"])
    graph.add_edge("tools", "record")
    graph.add_conditional_edges("record", route_after_record, ["agent", "finish"])
    graph.add_edge("finish", END)
    return graph.compile(checkpointer=checkpointer)


def _json(content: Any) -> Any:
    if not isinstance(content, str):
        return content
    try:
        return json.loads(content)
    except ValueError:
        return None


def _capture(plan: PlanDraft, name: str, payload: Any) -> bool:
    """Keep what a successful tool found; False when the result says the step did not succeed."""
    if not isinstance(payload, dict):
        return True
    if name == "search_models":
        plan.candidates = payload.get("candidates", [])
        plan.decided_by["candidates"] = f"search_models ({payload.get('mode')})"
        return bool(plan.candidates)
    if name == "read_model_card":
        plan.cards[str(payload.get("model") or payload.get("id") or len(plan.cards))] = payload
    elif name == "probe_models":
        plan.probe = payload
        # A probe of junk ids loads nothing: that step did not succeed, whatever the tool returned.
        return any(c.get("loaded") for c in payload.get("candidates", []))
    elif name == "write_deployment_code":
        plan.deployment = payload
        plan.decided_by["deployment"] = "template (fallback)" if payload.get("fell_back_to_template") else "llm"
        return payload.get("error") is None
    return True


def run_controller(ctx: ControllerContext, initial_done: list[str] | None = None) -> PlanDraft:
    graph = build_controller_graph(ctx)
    graph.invoke({"messages": [], "done": initial_done or [], "attempts": {}, "turns": 0},
                 {"recursion_limit": 4 * MAX_TURNS + 10})
    return ctx.plan
