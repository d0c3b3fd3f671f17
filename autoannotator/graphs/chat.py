"""The chat: a LangGraph tool loop over the run tools, checkpointed in SQLite (one thread per session).

    START -(weak LLM and the words match an intent?)-> intent -\\
          \\------------------------------------------> agent --+-(paid tool?)-> confirm -(yes)-> tools
                                                              +-(free tool)-------------------> tools
                                                              \\-(no call)-> END
    tools -(strong LLM)-> agent (it reads the results and answers) | -(weak LLM)-> reply -> END

``confirm`` pauses the graph with ``interrupt()`` before a long, paid tool (start_labelling, resume_run),
showing the plan and the estimated LLM calls and cost; ``Command(resume="yes"|"no")`` answers it.
A weak LLM (the embedded 135M one) answers in prose and never calls a tool, so a small deterministic
intent router reads the user's words in front of it and emits the tool call itself; a strong LLM
chooses freely. Routers are pure functions of the state.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import interrupt

from autoannotator.data import open_source
from autoannotator.graphs.chat_events import CONFIRM, result_payload, summarize
from autoannotator.prompts import render
from autoannotator.run.inspect import resolve_run, run_state
from autoannotator.run.plan import RunPlan, open_run_source
from autoannotator.task import LabelDef, build_task, parse_labels
from autoannotator.tools.loop_tools import LoopContext
from autoannotator.verify.prompt import VerifyPrompt

PAID_TOOLS = frozenset(CONFIRM)  # confirmed with an estimate before they run
DEFAULT_HARD_SHARE = 0.4  # share of rows sent to the LLM when no earlier run of the data says otherwise
TOKENS_OUT_PER_CALL = 8  # a one-label function call (measured on the embedded server)
MAX_TOOL_ROUNDS = 6  # tool calls a strong model may chain for one user message
WEAK_MAX_TOKENS = 96
HISTORY = 40  # messages the LLM sees: a long session must not outgrow its context
_ids = itertools.count()
WEAK_HELP = ("I understand: `label PATH for TASK[, a or b] [gold column C] [and write the result to OUT.csv]`, "
             "`why did row N go to the LLM?`, `show the code`, `use epsilon X` (or beta, k), `status` / "
             "`how much did it cost?`, `resume`.")


class ChatState(MessagesState, total=False):
    run_dir: str | None  # the current run: tools act on it unless told another
    params: dict[str, Any]  # set_parameter's values for the next run
    confirmed: bool


# -- pure: the intent router and the routers ------------------------------------------------------
_NUM = r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)"
# A data file named in a sentence: quoted (then it may hold spaces) or bare; trailing punctuation is not part of it.
_EXT = r"\.(?:csv|tsv|jsonl|ndjson|json|parquet)"
_FILE = (r"""(?:(?P<q>["'`])(?P<{0}_q>[^"'`]+?""" + _EXT + r""")(?P=q)|(?P<{0}>[^\s"'`,;()]+""" + _EXT + r"""\b))""")
_START = re.compile(r"\blabel\s+(?:the\s+)?(?:(?:file|data)\s+)?" + _FILE.format("path"), re.I)
# "..., and write the result to OUT.csv", "save them as x.jsonl", "into out.csv", "output: out.csv"
_OUT = [re.compile(r"[\s,;]*(?:\b(?:and|then)\s+)*\b(?:write|save|store|put|output|export|dump)\b(?:\s+[\w-]+){0,4}?"
                   r"\s+(?:to|as|in|into|at)\s+" + _FILE.format("out"), re.I),
        re.compile(r"[\s,;]*(?:\band\s+)?(?:\binto\b|\boutput(?:\s+file)?\s*[:=]?|->|>)\s*" + _FILE.format("out"), re.I)]
_GOLD = re.compile(r"[\s,;]*\b(?:and\s+)?(?:with\s+)?(?:the\s+)?gold(?:\s+labels?)?\s+(?:(?:are\s+)?in\s+)?(?:the\s+)?"
                   r"column\s+[\"'`]?(?P<col>\w+)[\"'`]?|[\s,;]*\b(?:and\s+)?(?:the\s+)?gold\s+labels?\s+(?:are\s+)?in\s+"
                   r"[\"'`]?(?P<col2>\w+)[\"'`]?", re.I)
# A label set: two or more words joined by commas, slashes, "or", "and" ("positive, negative or neutral").
_LIST = r"(?P<list>[\w-]+(?:(?:\s*[,/|]\s*(?:(?:or|and)\s+)?|\s+(?:or|and)\s+)[\w-]+)+)"
_LABELS = [re.compile(p + _LIST, re.I) for p in (
    r"[\s,;]*\b(?:with\s+|using\s+)?(?:the\s+)?labels?(?:\s+set)?\s*(?::|=|\bare\b|\bof\b)?\s*",  # with labels a,b
    r"\s*\(\s*(?:(?:as|either)\s+)?",  # (positive/negative)
    r"[\s,;]*\b(?:as|into|either)\s+(?:either\s+)?",  # as positive or negative
    r"\s*[,:;]\s*(?:either\s+)?(?:as\s+)?",  # for sentiment, positive or negative
)]


def _file(m: re.Match[str], name: str) -> str:
    """The path a _FILE group matched, quoted or bare."""
    return m[name] or m[f"{name}_q"]


_INTENTS: list[tuple[str, re.Pattern[str]]] = [
    ("start_labelling", _START),
    ("explain_row", re.compile(r"\brow\s*#?\s*(?P<row>\d+)\b", re.I)),
    ("show_code", re.compile(r"\bshow\b.*\bcode\b(?:.*\b(?:of|for)\s+(?P<model>[\w:./-]+))?", re.I)),
    ("set_parameter", re.compile(r"\b(?:use|set)\s+(?P<name>ε|β|eps|epsilon|beta|k)\s*(?:=|to|of)?\s*" + _NUM, re.I)),
    ("resume_run", re.compile(r"\b(?:resume|continue)\b", re.I)),
    ("run_status", re.compile(r"\bhow\s+much\b.*\bcost|\bcost\b|\bstatus\b|\bprogress\b|how\s+(?:is|far)", re.I)),
]


def route_intent(text: str) -> dict[str, Any] | None:
    """The tool call a weak LLM should have made for these words ({"name", "args"}), or None."""
    for name, pattern in _INTENTS:
        m = pattern.search(text)
        if not m:
            continue
        if name == "start_labelling":
            args = parse_label_request(text)
            if args is None:
                continue
            return {"name": name, "args": args}
        if name == "explain_row":
            return {"name": name, "args": {"row": int(m["row"])}}
        if name == "show_code":
            return {"name": name, "args": {"model": m["model"]} if m["model"] else {}}
        if name == "set_parameter":
            return {"name": name, "args": {"name": m["name"].lower(), "value": float(m[2])}}
        return {"name": name, "args": {}}
    return None


def _cut(text: str, m: re.Match[str]) -> str:
    return text[:m.start()] + " " + text[m.end():]


def parse_label_request(text: str) -> dict[str, Any] | None:
    """start_labelling's arguments from "label FILE for TASK[, LABELS] [gold column C] [and write it to OUT]".

    What the request names is honoured: the label set ("positive or negative", "as a, b or c", "with labels
    a,b", "(a/b)") and the output file are taken out of the sentence, and what "for" leaves is the task
    ("sentiment"), not the whole sentence. None when the words name no file, or neither a task nor labels.
    """
    start = _START.search(text)
    if not start:
        return None
    args: dict[str, Any] = {"data_path": _file(start, "path")}
    rest = text[start.end():]
    for pattern in _OUT:
        if out := pattern.search(rest):
            args["out"], rest = _file(out, "out"), _cut(rest, out)
            break
    if gold := _GOLD.search(rest):
        args["gold_column"], rest = gold["col"] or gold["col2"], _cut(rest, gold)
    task_at = re.search(r"^\s*,?\s*\bfor\s+", rest, re.I)
    body = rest[task_at.end():] if task_at else rest
    for pattern in _LABELS:
        lab = pattern.search(body)
        # A bare list ("for sentiment, positive or negative") must end the phrase, not open a longer one.
        if lab and (pattern is not _LABELS[-1] or not body[lab.end():].strip(" .!?)")):
            args["labels"] = ",".join(w for w in re.split(r"\s*[,/|]\s*(?:(?:or|and)\s+)?|\s+(?:or|and)\s+",
                                                         lab["list"]) if w)
            body = body[:lab.start()] + " " + body[lab.end():].lstrip(" )")
            break
    task = " ".join(body.split()).strip(" ,;:.!?")
    if task_at is None:  # "label x.csv as positive or negative": the labels are the task
        if "labels" not in args:
            return None
        task = " or ".join(args["labels"].split(","))
    return {**args, "task": f"label these texts for {task}"}


def honour_request(reply: AIMessage, text: str) -> AIMessage:
    """The model's start_labelling call with what the user's words named (label set, output file, gold column)
    put in as named: a model that adds a "neutral" the user did not ask for, or drops the output file, would
    otherwise label with other labels or write elsewhere. The rest is the model's; the confirmation shows all."""
    asked = parse_label_request(text)
    if not asked or not any(c["name"] == "start_labelling" for c in reply.tool_calls):
        return reply
    named = {k: asked[k] for k in ("labels", "out", "gold_column") if k in asked}
    same_file = lambda c: Path(str(c["args"].get("data_path", ""))).name == Path(asked["data_path"]).name  # noqa: E731
    calls = [{**c, "args": {**c["args"], **named}} if c["name"] == "start_labelling" and same_file(c) else c
             for c in reply.tool_calls]
    return reply.model_copy(update={"tool_calls": calls})


def is_yes(answer: Any) -> bool:
    return str(answer).strip().lower() in {"y", "yes", "ok", "okay", "sure", "go", "start", "do it", "true"}


def last_human(state: ChatState) -> str:
    return next((str(m.content) for m in reversed(state.get("messages", [])) if isinstance(m, HumanMessage)), "")


def tool_rounds(state: ChatState) -> int:
    """How many tool-calling answers the model gave since the user last spoke."""
    n = 0
    for m in reversed(state.get("messages", [])):
        if isinstance(m, HumanMessage):
            break
        n += isinstance(m, AIMessage) and bool(m.tool_calls)
    return n


def route_start(state: ChatState, weak: bool) -> Literal["intent", "agent"]:
    return "intent" if weak and route_intent(last_human(state)) else "agent"


def route_after_agent(state: ChatState) -> Literal["confirm", "tools", "__end__"]:
    last = state["messages"][-1] if state.get("messages") else None
    if not (isinstance(last, AIMessage) and last.tool_calls):
        return END
    return "confirm" if any(c["name"] in PAID_TOOLS for c in last.tool_calls) else "tools"


def route_after_confirm(state: ChatState) -> Literal["tools", "__end__"]:
    return "tools" if state.get("confirmed") else END


def route_after_tools(state: ChatState, weak: bool) -> Literal["agent", "reply"]:
    return "reply" if weak or tool_rounds(state) >= MAX_TOOL_ROUNDS else "agent"


# -- the graph -------------------------------------------------------------------------------------
@dataclass
class ChatContext:
    chat: BaseChatModel  # llm_session's handle.chat, or a scripted one in tests
    weak: bool  # handle.embedded: forced through the intent router
    loop: LoopContext
    tools: list[BaseTool]


def _system(ctx: ChatContext, state: ChatState) -> SystemMessage:
    run = state.get("run_dir") or "none yet"
    return SystemMessage(render("chat_system.md", run=run, params=state.get("params") or "none"))


def estimate(loop: LoopContext, tool: str, args: dict[str, Any], run_dir: str | None,
             params: dict[str, Any]) -> dict[str, Any]:
    """Rows x expected hard share x mean tokens per call x the price table: what the paid tool may cost."""
    try:
        return _estimate(loop, tool, args, run_dir, params)
    except Exception as exc:  # a missing file: say so in the question; the tool itself then reports it
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


def _estimate(loop: LoopContext, tool: str, args: dict[str, Any], run_dir: str | None,
              params: dict[str, Any]) -> dict[str, Any]:

    settings = loop.settings.model_copy(update={**params, **{k: args[k] for k in ("k", "epsilon", "beta")
                                                             if args.get(k) is not None}})
    share, source, per_call = DEFAULT_HARD_SHARE, "default", None
    if tool in ("verify_samples", "launch_finetune"):
        path = resolve_run(args["run"], settings.runs_dir) if args.get("run") else Path(run_dir or "")
        plan = RunPlan.load(path)
        data, task = open_run_source(plan), plan.task
        if tool == "launch_finetune":  # no LLM call: the question is about time, the pool is what trains
            return {"rows": 0, "hard_share": 0.0, "hard_share_from": "fine-tuning calls no LLM", "est_llm_calls": 0,
                    "tokens_per_call": [0, 0], "est_cost_usd": 0.0, "price_model": settings.prices.model,
                    "settings": {"run": plan.run_id, "pool": run_state(path, plan).pool_size}}
        ids = args.get("rows") or list(range(args.get("start", 0), args.get("stop") or args.get("start", 0) + 20))
        prompt = VerifyPrompt(task, settings.llm_max_text_chars)
        named = data.texts_for(i for i in ids if 0 <= i < data.n_rows)
        chars = [sum(len(str(m.content)) for m in prompt.messages(named[i])) for i in ids if i in named] or [0]
        per_call = (sum(chars) / len(chars) / 4, TOKENS_OUT_PER_CALL)
        return {"rows": len(ids), "hard_share": 1.0, "hard_share_from": "every row named", "est_llm_calls": len(ids),
                "tokens_per_call": [round(per_call[0]), per_call[1]],
                "est_cost_usd": round(len(ids) * settings.prices.cost(*per_call), 6),
                "price_model": settings.prices.model, "settings": {"run": plan.run_id},
                "note": "at most: rows already answered come from the run's cache, free"}
    if tool == "resume_run":
        path = resolve_run(args["run"], settings.runs_dir) if args.get("run") else Path(run_dir or "")
        plan = RunPlan.load(path)
        st, data, task = run_state(path, plan), open_run_source(plan), plan.task
        rows = (st.total or data.n_rows) - st.done
        if st.done and st.llm_calls is not None:
            share, source = st.llm_calls / st.done, f"this run so far ({st.done} rows)"
        cfg = {"run": plan.run_id, **{k: plan.settings.get(k) for k in ("k", "epsilon", "beta")}}
    else:
        data = open_source(Path(args["data_path"]).expanduser(), args.get("text_column"), None)
        labels = parse_labels(args["labels"]) if args.get("labels") else [LabelDef(name="a"), LabelDef(name="b")]
        task = build_task(args.get("task") or "label", labels, data.text_column)
        rows = data.n_rows - data.n_empty
        for prev in sorted(settings.runs_dir.glob("*/report.json"), reverse=True):  # newest run id first
            try:
                plan = RunPlan.load(prev.parent)
                report = json.loads(prev.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # another version's run, or a half-written report: not evidence
                continue
            if plan.data_fingerprint == data.fingerprint and report.get("n_samples"):
                share = report["label_sources"].get("llm_verified", 0) / report["n_samples"]
                source = f"run {plan.run_id}"
                if report["llm_calls"]:
                    per_call = (report["llm_tokens_in"] / report["llm_calls"],
                                report["llm_tokens_out"] / report["llm_calls"])
                break
        cfg = {"k": settings.k, "epsilon": settings.epsilon, "beta": settings.beta,
               "models": ", ".join(settings.models) or "chosen by the meta-controller"}
    if per_call is None:  # the real verification prompt on a sample of the texts, 4 characters a token
        prompt, sample = VerifyPrompt(task, settings.llm_max_text_chars), data.sample_texts(50)
        chars = [sum(len(str(m.content)) for m in prompt.messages(t)) for t in sample] or [0]
        per_call = (sum(chars) / len(chars) / 4, TOKENS_OUT_PER_CALL)
    calls = round(rows * share)
    return {"rows": rows, "hard_share": round(share, 4), "hard_share_from": source, "est_llm_calls": calls,
            "tokens_per_call": [round(per_call[0]), round(per_call[1])],
            "est_cost_usd": round(calls * settings.prices.cost(*per_call), 6), "price_model": settings.prices.model,
            "settings": cfg}


def build_chat_graph(ctx: ChatContext, checkpointer: Any = None) -> Any:
    tool_node = ToolNode(ctx.tools, handle_tool_errors=True)

    def intent(state: ChatState) -> dict:
        call = route_intent(last_human(state)) or {"name": "run_status", "args": {}}
        return {"messages": [AIMessage("", tool_calls=[{**call, "id": f"intent_{next(_ids)}", "type": "tool_call"}])]}

    def agent(state: ChatState) -> dict:
        history: list[BaseMessage] = list(state.get("messages", []))[-HISTORY:]
        while history and isinstance(history[0], ToolMessage):  # never open on a result without its call
            history.pop(0)
        if ctx.weak:  # its context is short and its server rejects tool-call history: the question alone
            history = [HumanMessage(last_human(state))]
        # A weak model's prose only fronts the help line: cap it (the 135M one rambles for a minute).
        model = ctx.chat.bind(max_tokens=WEAK_MAX_TOKENS) if ctx.weak else ctx.chat.bind_tools(ctx.tools)
        try:
            reply = model.invoke([_system(ctx, state), *history])
        except Exception as exc:  # a timeout or refusal ends this turn, not the session
            reply = AIMessage(f"(the LLM call failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        if ctx.weak and not reply.tool_calls:
            reply = AIMessage(f"{str(reply.content).strip()}\n\n{WEAK_HELP}".strip())
        return {"messages": [honour_request(reply, last_human(state))]}

    def confirm(state: ChatState) -> dict:
        # Re-runs from the top on resume: everything before interrupt() must be cheap and side-effect free.
        calls = [c for c in state["messages"][-1].tool_calls if c["name"] in PAID_TOOLS]
        plans = [{"tool": c["name"], "args": c["args"], "estimate": estimate(ctx.loop, c["name"], c["args"],
                                                                            state.get("run_dir"),
                                                                            state.get("params") or {})}
                 for c in calls]
        answer = interrupt({"question": "Start it?", "plans": plans})
        if is_yes(answer):
            return {"confirmed": True}
        cancelled = [ToolMessage(f"not started: the user answered {str(answer)!r}", tool_call_id=c["id"],
                                 name=c["name"], status="error") for c in state["messages"][-1].tool_calls]
        return {"confirmed": False, "messages": [*cancelled, AIMessage("OK — nothing was started.")]}

    def tools(state: ChatState, config: RunnableConfig) -> dict:
        ctx.loop.current_run = Path(state["run_dir"]) if state.get("run_dir") else None
        ctx.loop.params = dict(state.get("params") or {})
        out = tool_node.invoke(state, config)
        run = ctx.loop.current_run
        return {"messages": out["messages"], "run_dir": str(run) if run else None,
                "params": dict(ctx.loop.params), "confirmed": False}

    def reply(state: ChatState) -> dict:

        done = []
        for m in reversed(state["messages"]):
            if not isinstance(m, ToolMessage):
                break
            done.append(summarize(m.name or "", result_payload(m.content)))
        return {"messages": [AIMessage("\n".join(reversed(done)) or "Done.")]}

    graph = StateGraph(ChatState)
    for name, fn in [("intent", intent), ("agent", agent), ("confirm", confirm), ("tools", tools), ("reply", reply)]:
        graph.add_node(name, fn)
    graph.add_conditional_edges(START, lambda s: route_start(s, ctx.weak), ["intent", "agent"])
    graph.add_conditional_edges("intent", route_after_agent, ["confirm", "tools", END])
    graph.add_conditional_edges("agent", route_after_agent, ["confirm", "tools", END])
    graph.add_conditional_edges("confirm", route_after_confirm, ["tools", END])
    graph.add_conditional_edges("tools", lambda s: route_after_tools(s, ctx.weak), ["agent", "reply"])
    graph.add_edge("reply", END)
    return graph.compile(checkpointer=checkpointer)
