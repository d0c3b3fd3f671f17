"""The chat graph on scripted models: confirmation before paid tools, the weak-LLM intent router, persistence."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from fakes import ScriptedChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command
from rich.console import Console

from autoannotator.verify.simulated import SimulatedVerifier
from autoannotator import runner
from autoannotator.config import Settings
from autoannotator.data import load_dataset
from autoannotator.graphs.chat import (
    ChatContext,
    build_chat_graph,
    estimate,
    is_yes,
    route_after_agent,
    route_after_confirm,
    route_after_tools,
    route_intent,
    route_start,
    tool_rounds,
)
from autoannotator.run.store import RunStore
from autoannotator.tools.loop_tools import LoopContext, make_loop_tools
from autoannotator.cli.trace import TraceRenderer, events_from_update
from autoannotator.graphs.chat_events import events_from_message

REPO = Path(__file__).resolve().parents[1]
LABEL_ARGS = {"data_path": "", "task": "label these reviews for sentiment", "labels": "positive,negative",
              "gold_column": "label"}


def _call(name: str, args: dict, i: int = 0) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"t{name}{i}", "type": "tool_call"}])


def _data(tmp_path: Path, n: int = 40) -> Path:
    path = tmp_path / "reviews.csv"
    pd.read_csv(REPO / "examples" / "reviews.csv", dtype=str, keep_default_na=False).head(n).to_csv(path, index=False)
    return path


def _loop(tmp_path: Path) -> LoopContext:
    settings = Settings(models=["vader", "textblob"], sandbox="none", beta=100_000, batch_size=8,
                        runs_dir=tmp_path / "runs")

    def verifier(task, run_dir, run_id):  # seeded stand-in: no LLM verifies in these tests
        gold = load_dataset(tmp_path / "reviews.csv", None, "label").gold
        return SimulatedVerifier(gold, task, 0.9, run_id=run_id)

    return LoopContext(settings, label=runner.label, verifier_factory=verifier, verifier_info={"simulated": True})


class Session:
    """A chat graph on a scripted model, checkpointed in tmp_path/chat.sqlite, thread "t"."""

    def __init__(self, tmp_path: Path, script: list, weak: bool = False, loop: LoopContext | None = None):
        self.loop = loop or _loop(tmp_path)
        self.chat = ScriptedChatModel(script)
        self.conn = sqlite3.connect(tmp_path / "chat.sqlite", check_same_thread=False)
        tools = make_loop_tools(self.loop.settings, self.loop)
        self.graph = build_chat_graph(ChatContext(self.chat, weak, self.loop, tools), SqliteSaver(self.conn))
        self.cfg = {"configurable": {"thread_id": "t"}}

    def say(self, text: str) -> dict:
        return self.graph.invoke({"messages": [HumanMessage(text)]}, self.cfg)

    def answer(self, text: str) -> dict:
        return self.graph.invoke(Command(resume=text), self.cfg)

    def messages(self) -> list:
        return self.graph.get_state(self.cfg).values["messages"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[Path, Session]:
    """One chat that asked for a run, was shown the estimate, said yes: the run finished."""
    tmp = tmp_path_factory.mktemp("chat")
    data = _data(tmp)
    s = Session(tmp, [_call("start_labelling", {**LABEL_ARGS, "data_path": str(data)}), "Labelled 40 rows."])
    out = s.say(f"label {data} for sentiment")
    (pending,) = out["__interrupt__"]
    plan = pending.value["plans"][0]
    assert plan["tool"] == "start_labelling" and not list((tmp / "runs").glob("*/run.json"))  # nothing ran yet
    est = plan["estimate"]
    assert est["rows"] == 40 and est["hard_share"] == 0.4 and est["est_llm_calls"] == 16
    assert est["est_cost_usd"] > 0 and est["price_model"] == "gpt-3.5-turbo-0125"
    s.answer("yes")
    s.chat.assert_complete()
    return tmp, s


def test_yes_starts_the_run_and_makes_it_current(labelled):
    tmp, s = labelled
    state = s.graph.get_state(s.cfg).values
    run_dir = Path(state["run_dir"])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n_samples"] == 40 and report["llm"]["simulated"]
    result = next(m for m in s.messages() if isinstance(m, ToolMessage))
    assert result.status != "error" and json.loads(result.content)["run_id"] == run_dir.name
    assert isinstance(s.messages()[-1], AIMessage) and s.messages()[-1].content == "Labelled 40 rows."


def test_no_runs_nothing(tmp_path):
    data = _data(tmp_path)
    s = Session(tmp_path, [_call("start_labelling", {**LABEL_ARGS, "data_path": str(data)})])
    assert "__interrupt__" in s.say(f"label {data} for sentiment")
    s.answer("no")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/run.json"))
    cancelled, last = s.messages()[-2:]
    assert isinstance(cancelled, ToolMessage) and cancelled.status == "error" and "not started" in cancelled.content
    assert "nothing was started" in last.content
    s.chat.assert_complete()


def test_why_did_row_go_to_the_llm(labelled, tmp_path):
    tmp, first = labelled
    run_dir = Path(first.graph.get_state(first.cfg).values["run_dir"])
    store = RunStore(run_dir / "run.sqlite")
    hard = next(r for r in store.results() if r["label_source"] == "llm_verified")
    store.close()
    loop = _loop(tmp)  # a new session on the same checkpoint thread: it knows the current run
    s = Session(tmp, [_call("explain_row", {"row": hard["row_id"]}), "It was hard."], loop=loop)
    s.say(f"why did row {hard['row_id']} go to the LLM?")
    result = json.loads(next(m for m in reversed(s.messages()) if isinstance(m, ToolMessage)).content)
    assert result["went_to_llm"] and result["route"] == "llm_verified" and result["epsilon"] == 1e-6
    assert "U = " in result["reason"] and set(result["votes"]) == {"vader", "textblob"}
    assert result["llm_answer"] == repr(hard["llm_label"]) + " (no cache record: the verifier keeps none, e.g. a " \
                                                              "simulated one)"
    s.chat.assert_complete()


def test_weak_llm_goes_through_the_intent_router(labelled):
    tmp, first = labelled
    s = Session(tmp, [], weak=True)  # no scripted reply: the LLM must not be asked at all
    s.say("why did row 3 go to the LLM?")
    s.say("how much did it cost?")
    s.say("use epsilon 0.5")
    results = [m for m in s.messages() if isinstance(m, ToolMessage)][-3:]
    assert [m.name for m in results] == ["explain_row", "run_status", "set_parameter"]
    status = json.loads(results[1].content)
    assert status["rows_done"] == 40 and status["finished"] and status["est_cost_usd"] > 0
    assert s.graph.get_state(s.cfg).values["params"] == {"epsilon": 0.5}
    assert "next run: epsilon=0.5" in s.messages()[-1].content
    assert s.chat.calls == []


def test_weak_llm_without_an_intent_answers_in_prose_with_help(tmp_path):
    s = Session(tmp_path, ["Hello there."], weak=True)
    s.say("hi")
    assert s.messages()[-1].content.startswith("Hello there.") and "label PATH for TASK" in s.messages()[-1].content
    assert s.chat.tool_choices == []  # a weak model is never offered tools it would ignore


def test_tool_errors_come_back_as_messages(tmp_path):
    s = Session(tmp_path, [_call("explain_row", {"row": 1}), "Sorry."])
    s.say("why did row 1 go to the LLM?")
    error = next(m for m in s.messages() if isinstance(m, ToolMessage))
    assert error.status == "error" and "no run yet" in error.content
    s.chat.assert_complete()


def test_bad_parameter_is_refused(tmp_path):
    s = Session(tmp_path, [_call("set_parameter", {"name": "ε", "value": 2}), "No."])
    s.say("set epsilon to 2")
    error = next(m for m in s.messages() if isinstance(m, ToolMessage))
    assert error.status == "error" and "epsilon=2" in error.content
    assert not s.graph.get_state(s.cfg).values.get("params")


def test_persistence_a_new_graph_sees_the_earlier_messages(labelled):
    tmp, first = labelled
    again = Session(tmp, [])
    texts = [m.content for m in again.messages()]
    assert any("label" in str(t) and "for sentiment" in str(t) for t in texts) and "Labelled 40 rows." in texts
    assert again.graph.get_state(again.cfg).values["run_dir"] == first.graph.get_state(first.cfg).values["run_dir"]


def test_estimate_learns_the_hard_share_from_an_earlier_run(labelled):
    tmp, first = labelled
    report = json.loads((Path(first.graph.get_state(first.cfg).values["run_dir"]) / "report.json").read_text())
    est = estimate(first.loop, "start_labelling", {**LABEL_ARGS, "data_path": str(tmp / "reviews.csv")}, None,
                   {"beta": 50})
    assert est["hard_share_from"].startswith("run ") and est["hard_share"] == report["llm_call_rate"]
    assert est["est_llm_calls"] == report["llm_calls"] and est["settings"]["beta"] == 50
    assert "error" in estimate(first.loop, "start_labelling", {"data_path": str(tmp / "missing.csv")}, None, {})


def test_stream_feeds_the_trace_with_panels_and_live_counters(tmp_path):
    data = _data(tmp_path, 24)
    s = Session(tmp_path, [_call("start_labelling", {**LABEL_ARGS, "data_path": str(data)}), "Done."])
    console = Console(record=True, width=120, force_terminal=False)
    trace = tmp_path / "session" / "trace.jsonl"
    renderer = TraceRenderer(console, "normal", trace)
    inputs = {"messages": [HumanMessage(f"label {data} for sentiment")]}
    for inputs in (inputs, Command(resume="yes")):
        for mode, chunk in s.graph.stream(inputs, s.cfg, stream_mode=["updates", "custom"]):
            for event in [chunk] if mode == "custom" else events_from_update(chunk):
                renderer(event)
    screen = console.export_text()
    assert "confirm" in screen and "24 rows × 40% hard" in screen and "start_labelling" in screen
    assert "rows 24/24" in screen and "LLM calls" in screen and "pool" in screen
    kinds = [json.loads(line)["type"] for line in trace.read_text().splitlines()]
    assert {"tool_call", "confirm", "counters", "run_event", "tool_result", "assistant"} <= set(kinds)
    run_dir = Path(s.graph.get_state(s.cfg).values["run_dir"])
    assert "counters" in (run_dir / "trace.jsonl").read_text()  # the run keeps its own trace too


# -- pure functions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("label data/x.csv for sentiment", {"name": "start_labelling", "args": {
        "data_path": "data/x.csv", "task": "label these texts for sentiment"}}),
    ("please label r.jsonl for topic with labels a,b, c and gold column label", {"name": "start_labelling", "args": {
        "data_path": "r.jsonl", "labels": "a,b,c", "gold_column": "label", "task": "label these texts for topic"}}),
    ("why did row 12 go to the LLM?", {"name": "explain_row", "args": {"row": 12}}),
    ("Why did row #7 get verified", {"name": "explain_row", "args": {"row": 7}}),
    ("show me the deployment code", {"name": "show_code", "args": {}}),
    ("show the code for vader", {"name": "show_code", "args": {"model": "vader"}}),
    ("use ε 0.3", {"name": "set_parameter", "args": {"name": "ε", "value": 0.3}}),
    ("set beta to 500", {"name": "set_parameter", "args": {"name": "beta", "value": 500.0}}),
    ("use epsilon=1e-6", {"name": "set_parameter", "args": {"name": "epsilon", "value": 1e-6}}),
    ("how much did it cost?", {"name": "run_status", "args": {}}),
    ("status", {"name": "run_status", "args": {}}),
    ("resume the run", {"name": "resume_run", "args": {}}),
    ("hello, who are you?", None),
])
def test_intent_router(text, expected):
    assert route_intent(text) == expected


def test_routers_are_pure():
    human, prose = HumanMessage("hi"), AIMessage("hello")
    assert route_start({"messages": [HumanMessage("status")]}, weak=True) == "intent"
    assert route_start({"messages": [HumanMessage("status")]}, weak=False) == "agent"
    assert route_start({"messages": [human]}, weak=True) == "agent"
    assert route_after_agent({"messages": [human, prose]}) == "__end__"
    assert route_after_agent({"messages": [_call("run_status", {})]}) == "tools"
    assert route_after_agent({"messages": [_call("start_labelling", {})]}) == "confirm"
    assert route_after_agent({"messages": [_call("resume_run", {})]}) == "confirm"
    assert route_after_confirm({"confirmed": True}) == "tools" and route_after_confirm({}) == "__end__"
    many = {"messages": [human] + [_call("run_status", {}, i) for i in range(6)]}
    assert tool_rounds(many) == 6 and route_after_tools(many, weak=False) == "reply"
    assert route_after_tools({"messages": [human, _call("run_status", {})]}, weak=False) == "agent"
    assert route_after_tools({"messages": [human, _call("run_status", {})]}, weak=True) == "reply"
    assert is_yes(" Yes ") and is_yes("y") and not is_yes("no") and not is_yes("")


def test_a_stopped_run_is_resumed_after_confirmation(tmp_path):
    data = _data(tmp_path, 24)
    loop = _loop(tmp_path)
    calls = {"n": 0}
    real = loop.verifier_factory

    class Flaky:  # fails on its second batch: the run stops with rows left to label
        def __init__(self, inner):
            self.inner = inner

        def verify(self, items):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("the verifier fell over")
            return self.inner.verify(items)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    loop.verifier_factory = lambda task, run_dir, run_id: Flaky(real(task, run_dir, run_id))
    s = Session(tmp_path, [_call("start_labelling", {**LABEL_ARGS, "data_path": str(data)}), "It failed.",
                           _call("resume_run", {}), "Resumed."], loop=loop)
    s.say(f"label {data} for sentiment")
    s.answer("yes")
    failed = next(m for m in s.messages() if isinstance(m, ToolMessage))
    assert failed.status == "error" and "the verifier fell over" in failed.content
    run_dir = Path(s.graph.get_state(s.cfg).values["run_dir"])  # the stopped run is the current one
    assert not (run_dir / "report.json").exists()
    (pending,) = s.say("resume it")["__interrupt__"]
    est = pending.value["plans"][0]["estimate"]
    assert pending.value["plans"][0]["tool"] == "resume_run" and 0 < est["rows"] < 24
    assert est["settings"]["run"] == run_dir.name
    s.answer("y")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n_samples"] == 24 and s.messages()[-1].content == "Resumed."
    s.chat.assert_complete()


def test_show_code_renders_each_models_latest_version_highlighted(labelled, tmp_path):
    tmp, first = labelled
    run_dir = tmp_path / "copy"
    (run_dir / "deploy" / "ensemble").mkdir(parents=True)
    (run_dir / "run.json").write_text((Path(first.graph.get_state(first.cfg).values["run_dir"]) / "run.json")
                                      .read_text())
    for n in (1, 2):
        (run_dir / "deploy" / "ensemble" / f"v{n}.py").write_text(f"def serve():\n    return {n}  # VERSION {n}\n")
    (run_dir / "deploy" / "ensemble" / "v2.smoke.json").write_text(json.dumps({"exit_code": 0}))
    loop = _loop(tmp)
    tool = next(t for t in make_loop_tools(loop.settings, loop) if t.name == "show_code")
    result = tool.invoke({"run": str(run_dir)})
    assert [f["version"] for f in result["files"]] == [1, 2] and result["files"][1]["smoke_exit_code"] == 0
    for mode, shown in (("normal", ["VERSION 2"]), ("verbose", ["VERSION 1", "VERSION 2"])):
        console = Console(record=True, width=100)
        renderer = TraceRenderer(console, mode)  # type: ignore[arg-type]
        renderer.render({"type": "tool_call", "id": "c", "name": "show_code", "args": {}})
        renderer.render({"type": "tool_result", "id": "c", "name": "show_code", "ok": True, "result": result})
        screen = console.export_text()
        assert all(v in screen for v in shown) and ("VERSION 1" in screen) == (mode == "verbose")
        assert "ensemble v2 · smoke test exit 0" in screen


def test_trace_modes_quiet_shows_only_summaries_verbose_the_full_result():
    result = {"run_id": "r1", "run_dir": "/x", "out_path": "/x/o.csv", "rows": 10, "llm_calls": 4,
              "llm_call_rate": 0.4, "tokens_in": 400, "tokens_out": 32, "est_cost_usd": 0.00025, "accuracy": 0.9,
              "finetune_rounds": [{"round": 1, "model": "student", "acc_before": 0.5, "acc_after": 0.8, "kept": True}]}
    events = [{"type": "user", "text": "label a.csv for sentiment"},
              {"type": "tool_call", "id": "c1", "name": "start_labelling", "args": {"data_path": "a.csv"}},
              {"type": "counters", "run_id": "r1", "done": 10, "total": 10, "llm_rows": 4, "seen": 10, "pool": 4,
               "beta": 40, "llm_calls": 4, "tokens_in": 400, "tokens_out": 32, "cost_usd": 0.00025, "agreement": 0.6},
              {"type": "run_event", "event": "finetune_done", "round": 1, "model": "student", "accepted": True,
               "holdout_balanced_acc_before": 0.5, "holdout_balanced_acc_after": 0.8},
              {"type": "tool_result", "id": "c1", "name": "start_labelling", "ok": True, "result": result},
              {"type": "assistant", "text": "run r1: 10 rows labelled, 4 LLM calls (40.0%), est. $0.000250, "
                                            "accuracy 0.9000; labels in /x/o.csv"}]
    screens = {}
    for mode in ("quiet", "normal", "verbose"):
        console = Console(record=True, width=120)
        TraceRenderer(console, mode).replay(events)  # type: ignore[arg-type]
        screens[mode] = console.export_text()
    summary = "run r1: 10 rows labelled, 4 LLM calls (40.0%)"
    assert all(screens[m].count(summary) == 1 for m in screens)  # a weak LLM's echo of the panel: drawn once
    assert "◆ start_labelling" not in screens["quiet"] and "rows 10/10" not in screens["quiet"]
    assert "◆ start_labelling" in screens["normal"] and "rows 10/10" in screens["normal"]
    assert "held-out balanced accuracy 0.5 → 0.8" in screens["normal"] and "'out_path': '/x/o.csv'" not in screens["normal"]
    assert "'out_path': '/x/o.csv'" in screens["verbose"]


def test_the_example_plugin_is_called_by_the_llm_and_traced(tmp_path):
    """A third-party tool from the config's tool_paths joins the registry, the LLM calls it, the trace shows it."""
    from autoannotator.tools.registry import default_registry

    plugin = REPO / "examples" / "plugins" / "keyword_prefilter" / "keyword_prefilter.py"
    loop = _loop(tmp_path)
    loop.settings = loop.settings.model_copy(update={"tool_paths": [f"{plugin}:make_tool"]})
    registry = default_registry(loop.settings, loop)
    assert registry.source("keyword_prefilter").startswith("config path")
    args = {"rules": [{"keyword": "refund", "label": "billing"}], "texts": ["I want a refund", "fine"]}
    chat = ScriptedChatModel([_call("keyword_prefilter", args), "Row 0 is billing."])
    conn = sqlite3.connect(tmp_path / "chat.sqlite", check_same_thread=False)
    tools = registry.tools() + [t for t in make_loop_tools(loop.settings, loop) if t.name not in registry]
    graph = build_chat_graph(ChatContext(chat, False, loop, tools), SqliteSaver(conn))
    cfg = {"configurable": {"thread_id": "p"}}
    updates = list(graph.stream({"messages": [HumanMessage("which rows does the refund rule settle?")]}, cfg,
                                stream_mode="updates"))
    chat.assert_complete()
    assert "keyword_prefilter" in {t.name for t in chat.bound_tools}
    (result,) = [m for m in graph.get_state(cfg).values["messages"] if isinstance(m, ToolMessage)]
    assert result.name == "keyword_prefilter" and json.loads(result.content)["settled"][0]["label"] == "billing"
    console = Console(record=True, width=120)
    renderer = TraceRenderer(console)
    for update in updates:
        for event in events_from_update(update):
            renderer.render(event)
    assert "keyword_prefilter" in console.export_text()


def test_the_loops_steps_are_tools_a_scripted_llm_calls(tmp_path):
    """run_ensemble, verify_samples and launch_finetune: the graph's own steps, called from chat, traced."""
    data = _data(tmp_path, 24)
    loop = _loop(tmp_path)
    loop.settings = loop.settings.model_copy(update={"models": ["vader", "textblob", "student"]})
    s = Session(tmp_path, [_call("start_labelling", {**LABEL_ARGS, "data_path": str(data)}), "Labelled.",
                           _call("run_ensemble", {"start": 0, "stop": 6}), "Scored.",
                           _call("verify_samples", {"rows": [0, 1, 2, 3]}), "Verified.",
                           _call("launch_finetune", {}), "Tuned."], loop=loop)
    s.say(f"label {data} for sentiment")
    s.answer("yes")
    run_dir = Path(s.graph.get_state(s.cfg).values["run_dir"])
    pool_before = RunStore(run_dir / "run.sqlite").pool_size()

    s.say("what do the models say about the first six rows?")  # free: no confirmation
    scored = json.loads(next(m for m in reversed(s.messages()) if isinstance(m, ToolMessage)).content)
    assert [r["row"] for r in scored["rows"]] == list(range(6))
    assert set(scored["rows"][0]["votes"]) == {"vader", "textblob", "student"}
    store = RunStore(run_dir / "run.sqlite")
    stored = {r["row_id"]: r for r in store.results()}
    store.close()
    for row in scored["rows"]:  # the same step the loop ran: the same frozen votes and U as the run stored
        assert row["votes"]["vader"] == stored[row["row"]]["votes"]["vader"]
        assert row["route"] == ("llm" if row["uncertainty"] >= 1e-6 else "accept")

    out = s.say("ask the LLM about rows 0 to 3")
    (pending,) = out["__interrupt__"]
    assert pending.value["plans"][0]["tool"] == "verify_samples"
    assert pending.value["plans"][0]["estimate"]["est_llm_calls"] == 4
    s.answer("yes")
    verified = json.loads(next(m for m in reversed(s.messages()) if isinstance(m, ToolMessage)).content)
    assert sorted(a["row"] for a in verified["answers"]) == [0, 1, 2, 3]
    assert verified["pool_size"] >= pool_before and verified["verifier"] == "simulated:0.9"

    out = s.say("fine-tune now")
    assert out["__interrupt__"][0].value["plans"][0]["tool"] == "launch_finetune"
    s.answer("yes")
    tuned = next(m for m in reversed(s.messages()) if isinstance(m, ToolMessage))
    assert tuned.status != "error", tuned.content
    result = json.loads(tuned.content)
    assert result["records"] and result["records"][0]["model"] == "student" and result["pool_size"] >= 4
    store = RunStore(run_dir / "run.sqlite")
    assert any(r["round"] == result["round"] for r in store.finetune_records())
    store.close()

    events = [e for m in s.messages() for e in events_from_message(m)]
    called = [e["name"] for e in events if e["type"] == "tool_call"]
    assert {"run_ensemble", "verify_samples", "launch_finetune"} <= set(called)
    console = Console(record=True, width=120)
    TraceRenderer(console, "normal").replay(events)
    shown = console.export_text()
    assert "run_ensemble" in shown and "verify_samples" in shown and "launch_finetune" in shown
    s.chat.assert_complete()
