"""`autoannotator chat`: talk to the labelling loop; every step drawn as it happens (see ui/trace.py).

The conversation lives in ``RUNS_DIR/chat.sqlite`` (LangGraph's SQLite checkpointer, one thread per
session), its trace in ``RUNS_DIR/chat/<session>/trace.jsonl``; ``--resume`` picks both back up.
Imports stay inside the command: `autoannotator --help` must not load LangGraph.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

QUIT = {"/quit", "/exit", "/q"}
ChatModelOpener = Callable[[Any, ExitStack, Any], "tuple[Any, bool]"]


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)


def chat(
    resume: bool = typer.Option(False, "--resume", help="Pick the last (or --session) conversation back up."),
    session: Optional[str] = typer.Option(None, "--session", help="Conversation name (default: a new one)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show each tool's full result."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final summaries."),
    replay: Optional[Path] = typer.Option(None, "--replay", metavar="TRACE.jsonl", help="Re-render a saved trace."),
    llm_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint (default: embedded SmolLM2)."),
    llm_model: Optional[str] = typer.Option(None, help="Model name at that endpoint."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Where runs live (default: ./runs)."),
    config: Optional[Path] = typer.Option(None, help="TOML config file."),
) -> None:
    """Chat with the labelling loop: start runs, ask why a row went to the LLM, see the code and the costs."""
    from autoannotator.config import load_settings
    from autoannotator.errors import UserError
    from autoannotator.cli.trace import TraceRenderer, read_trace

    console = Console(highlight=False)
    mode = "verbose" if verbose else "quiet" if quiet else "normal"
    if replay is not None:
        if not replay.is_file():
            raise UserError(f"no trace file {replay}")
        TraceRenderer(console, mode).replay(read_trace(replay))  # type: ignore[arg-type]
        return
    settings = load_settings({"runs_dir": runs_dir, "llm_base_url": llm_base_url, "llm_model": llm_model}, config)
    chat_dir = settings.runs_dir / "chat"
    chat_dir.mkdir(parents=True, exist_ok=True)
    if session is not None and not re.fullmatch(r"[\w.-]+", session):  # a folder name: no path tricks
        raise UserError(f"--session takes letters, digits, '.', '-' and '_', got {session!r}")
    last = chat_dir / "last-session"
    name = session or (last.read_text().strip() if resume and last.is_file() else
                       f"chat-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    last.write_text(name)
    with ExitStack() as stack:
        graph = build_graph(settings, stack, chat_dir.parent / "chat.sqlite")
        cfg = {"configurable": {"thread_id": name}, "recursion_limit": 100}
        renderer = TraceRenderer(console, mode, chat_dir / name / "trace.jsonl")  # type: ignore[arg-type]
        _welcome(graph, cfg, renderer, console, name, resume)
        try:
            while True:
                try:
                    text = console.input("[bold cyan]you › [/]").strip()
                except (EOFError, KeyboardInterrupt):  # Ctrl-D (or Ctrl-C at the prompt)
                    console.print()
                    break
                if text in QUIT:
                    break
                if not text:
                    continue
                renderer({"type": "user", "text": text}, render=False)
                try:
                    drive(graph, {"messages": [("user", text)]}, cfg, renderer, console)
                except KeyboardInterrupt:  # the turn stops; the session (and a stopped run) can go on
                    renderer.stop_live()
                    close_dangling(graph, cfg)
                    console.print("[yellow]interrupted[/]: a run stopped here can be continued: say `resume`")
        finally:
            renderer.stop_live()
            close_dangling(graph, cfg)
    console.print(f"[dim]session saved: {name} — continue it with[/] autoannotator chat --resume --session {name}")


def open_chat_model(settings: Any, stack: ExitStack, loop: Any) -> tuple[Any, bool]:
    """The configured LLM (or the embedded one), kept for the session; the loop's tools verify with it too."""
    from autoannotator.llm.factory import llm_session

    handle = stack.enter_context(llm_session(settings))
    loop.llm = handle
    return handle.chat, handle.embedded


# Where the chat's model comes from: tests (tests/scripted_chat.py) put a scripted one here.
chat_model_opener: ChatModelOpener = open_chat_model


def build_graph(settings: Any, stack: ExitStack, db: Path) -> Any:
    from langgraph.checkpoint.sqlite import SqliteSaver

    from autoannotator import runner
    from autoannotator.graphs.chat import ChatContext, build_chat_graph
    from autoannotator.tools.loop_tools import LoopContext
    from autoannotator.tools.registry import default_registry

    loop = LoopContext(settings, label=runner.label)
    stack.callback(loop.resources.close)
    model, weak = chat_model_opener(settings, stack, loop)
    registry = default_registry(settings, loop, group="loop")
    db.parent.mkdir(parents=True, exist_ok=True)
    saver = stack.enter_context(SqliteSaver.from_conn_string(str(db)))
    return build_chat_graph(ChatContext(chat=model, weak=weak, loop=loop, tools=registry.tools()), saver)


def drive(graph: Any, inputs: Any, cfg: dict, renderer: Any, console: Console) -> None:
    """Stream one turn into the renderer; at a confirmation, ask and resume until the turn ends."""
    from langgraph.types import Command

    from autoannotator.cli.trace import events_from_update

    while True:
        if inputs is not None:  # None: answer the pending confirmation first
            for mode, chunk in graph.stream(inputs, cfg, stream_mode=["updates", "custom"]):
                for event in [chunk] if mode == "custom" else events_from_update(chunk):
                    renderer(event)
        if not graph.get_state(cfg).interrupts:
            return
        try:
            answer = console.input("[bold yellow]start it? \\[y/N] › [/]").strip() or "no"
        except EOFError:  # Ctrl-D at the question: nothing paid starts unasked
            answer = "no"
        renderer({"type": "confirm_answer", "answer": answer})
        inputs = Command(resume=answer)


def close_dangling(graph: Any, cfg: dict) -> None:
    """Answer tool calls a crash or Ctrl-C left without results: an OpenAI API rejects such a history."""
    from langchain_core.messages import AIMessage, ToolMessage

    snap = graph.get_state(cfg)
    msgs = snap.values.get("messages", []) if snap.values else []
    if snap.interrupts or not msgs or not isinstance(msgs[-1], AIMessage) or not msgs[-1].tool_calls:
        return
    graph.update_state(cfg, {"messages": [ToolMessage("stopped before it finished", tool_call_id=c["id"],
                                                      name=c["name"], status="error") for c in msgs[-1].tool_calls]},
                       as_node="reply")


def _welcome(graph: Any, cfg: dict, renderer: Any, console: Console, name: str, resume: bool) -> None:
    from autoannotator.cli.trace import events_from_message

    close_dangling(graph, cfg)
    snap = graph.get_state(cfg)
    messages = snap.values.get("messages", []) if snap.values else []
    if messages:
        console.rule(f"session {name}: earlier")
        renderer.replay(e for m in messages for e in events_from_message(m))
        if snap.values.get("run_dir"):
            console.print(f"[dim]current run:[/] {snap.values['run_dir']}")
        console.rule()
        if snap.interrupts:  # quit at a confirmation: ask it again
            renderer.render({"type": "confirm", **snap.interrupts[0].value})
            drive(graph, None, cfg, renderer, console)
    elif resume:
        console.print(f"[yellow]no earlier conversation in session {name}: starting it[/]")
    console.print("[dim]session[/] " + name + "[dim] · /quit or Ctrl-D to leave · e.g. "
                  "label examples/reviews.csv for sentiment with labels positive,negative[/]")
