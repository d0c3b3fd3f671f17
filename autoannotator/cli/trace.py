"""The chat's trace: what the graph did, as events, rendered with rich and appended to ``trace.jsonl``.

Events (JSON objects, each with ``type``): ``user``, ``assistant`` (text), ``tool_call`` (id, name, args),
``tool_result`` (id, name, ok, result), ``confirm`` (plans with their estimates), ``confirm_answer``,
``run_event`` (the runner's progress events) and ``counters`` (a snapshot per batch). The same renderer
draws a live session, a resumed one and ``autoannotator chat --replay TRACE.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.pretty import Pretty
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from autoannotator.graphs.chat_events import (  # noqa: F401  (re-exported: the CLI's one import)
    CONFIRM,
    PAID,
    events_from_message,
    events_from_update,
    result_payload,
    summarize,
)

Mode = Literal["normal", "verbose", "quiet"]
CODE_LINES = 30  # of each file in a normal trace; --verbose shows every line of every version


def counters_line(c: dict[str, Any]) -> Text:
    agr = "-" if c.get("agreement") is None else f"{c['agreement']:.1%}"
    return Text.assemble(("▸ rows ", "cyan"), f"{c['done']}/{c.get('total') or '?'}", ("  LLM calls ", "cyan"),
                         str(c["llm_calls"]), ("  tokens ", "cyan"), f"{_k(c['tokens_in'])}/{_k(c['tokens_out'])}",
                         ("  cost ", "cyan"), f"${c['cost_usd']:.4f}", ("  agreement ", "cyan"), agr,
                         ("  pool ", "cyan"), f"{c['pool']}/β={c['beta']}")


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


# -- rendering -------------------------------------------------------------------------------------
class TraceRenderer:
    """Draws events on ``console`` and appends them to the session's trace (and the run's, while one runs)."""

    def __init__(self, console: Console, mode: Mode = "normal", trace_path: Path | None = None) -> None:
        self.console, self.mode, self.trace_path = console, mode, trace_path
        self.run_trace: Path | None = None
        self.calls: dict[str, tuple[str, dict]] = {}
        self.live: Live | None = None
        self.summaries: list[str] = []  # of this turn's panels: a weak LLM's reply repeats them, drawn once
        self._printed_at = -1.0  # share of rows at the last printed counters line (no live display)

    def __call__(self, event: dict[str, Any], render: bool = True) -> None:
        event = {"ts": round(time.time(), 3), **event}
        if event["type"] == "run_event" and event.get("event") == "start":
            self.run_trace = Path(event["run_dir"]) / "trace.jsonl"
        for path in {p for p in (self.trace_path, self.run_trace) if p is not None}:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
        if event["type"] == "tool_result" and event["name"] in PAID:
            self.run_trace = None
        if render:
            self.render(event)

    def render(self, e: dict[str, Any]) -> None:
        kind, quiet = e["type"], self.mode == "quiet"
        if kind == "counters":
            return None if quiet else self._counters(e)
        if kind != "run_event":
            self.stop_live()
        if kind == "user":
            self.summaries = []
            self.console.print(Text.assemble(("you › ", "bold cyan"), e["text"]))
        elif kind == "assistant":
            if e["text"] != "\n".join(self.summaries):
                self.console.print(Text.assemble(("autoannotator › ", "bold magenta"), e["text"]))
            self.summaries = []
        elif kind == "tool_call":
            self.calls[e["id"]] = (e["name"], e["args"])
            if not quiet and e["name"] not in CONFIRM:  # a confirmed call's plan is the confirmation's to show
                self.console.print(Text(f"… {e['name']} {_args(e['args'])}", style="dim"))
        elif kind == "tool_result":
            name, args = self.calls.get(e["id"], (e["name"], {}))
            if not quiet:
                self.console.print(self._tool_panel(name, args, e["ok"], e["result"]))
            elif name in PAID:
                self.console.print(Text(summarize(name, e["result"]), style="bold" if e["ok"] else "red"))
            if not quiet or name in PAID:
                self.summaries.append(summarize(name, e["result"]))
        elif kind == "confirm":
            self.console.print(_confirm_panel(e))
        elif kind == "confirm_answer" and not quiet:
            self.console.print(Text(f"answer: {e['answer']}", style="yellow"))
        elif kind == "run_event" and not quiet:
            self._run_event(e)

    def stop_live(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _counters(self, c: dict[str, Any]) -> None:
        if self.console.is_terminal:  # one line, redrawn in place
            if self.live is None:
                self.live = Live(console=self.console, auto_refresh=False, transient=False)
                self.live.start()
            self.live.update(counters_line(c), refresh=True)
            return
        share = c["done"] / c["total"] if c.get("total") else 1.0  # a file or a replay: every quarter
        if share >= 1.0 or share - self._printed_at >= 0.25 or c["done"] == 0:
            self._printed_at = share
            self.console.print(counters_line(c))

    def _run_event(self, e: dict[str, Any]) -> None:
        kind, say = e.get("event"), self.console.print
        if kind == "start":
            self._printed_at = -1.0
            say(Text.assemble(("run ", "dim"), Path(e["run_dir"]).name, ("  models ", "dim"), ", ".join(e["models"]),
                              ("  verifier ", "dim"), str(e["llm"])))
        elif kind == "note":
            say(Text.assemble(("note: ", "cyan"), e["text"]))
        elif kind == "resumed":
            say(Text(f"resuming: {e['rows_done']} of {e['n_rows']} rows already labelled", style="yellow"))
        elif kind == "finetune_start":
            say(Text(f"fine-tuning {e['model']} (round {e['round']}) on {e['n']} samples", style="bold"))
        elif kind == "finetune_done":
            kept = ("kept", "green") if e["accepted"] else ("rejected: the old weights stay", "red")
            say(Text.assemble(f"  round {e['round']} {e['model']}: held-out balanced accuracy ",
                              (f"{e.get('holdout_balanced_acc_before')} → {e.get('holdout_balanced_acc_after')}",
                               "bold"), "  ", kept))
        elif kind == "tool":  # the meta-controller's planning steps
            say(Text(f"  planner: {e['name']} {'ok' if e['ok'] else 'failed'}", style="dim" if e["ok"] else "red"))

    def _tool_panel(self, name: str, args: dict, ok: bool, result: Any) -> Panel:
        parts: list[RenderableType] = [Text(_args(args), style="dim")] if args else []
        parts.append(Text(summarize(name, result), style="bold" if ok else "red"))
        if ok and isinstance(result, dict):
            parts += _details(name, result, self.mode == "verbose")
            if self.mode == "verbose":
                parts.append(Pretty({k: v for k, v in result.items() if k != "files"}))
        title = Text.assemble(("◆ ", ""), (name, "bold"), ("" if ok else "  ✗", "red"))
        return Panel(Group(*parts), title=title, title_align="left", border_style="green" if ok else "red")

    def replay(self, events: Iterable[dict[str, Any]]) -> None:
        for e in events:
            self.render(e)
        self.stop_live()


def _args(args: dict[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" for k, v in args.items() if v is not None) or "(no arguments)"


def _details(name: str, r: dict[str, Any], verbose: bool) -> list[RenderableType]:
    out: list[RenderableType] = []
    if name == "explain_row":
        votes = Table("model", "vote", "p", box=None, padding=(0, 2))
        for model, v in r["votes"].items():
            votes.add_row(model, v.get("label") or "abstains", "" if v.get("p") is None else f"{v['p']:.4f}")
        out += [Text(r["text"][:300], style="italic"), votes]
    elif name == "show_code":
        files = r["files"] if verbose else list({f["model"]: f for f in r["files"]}.values())  # latest of each
        for f in files:
            lines = f["code"].rstrip("\n").splitlines()
            shown = lines if verbose else lines[:CODE_LINES]
            smoke = "" if f.get("smoke_exit_code") is None else f" · smoke test exit {f['smoke_exit_code']}"
            out += [Text(f"{f['model']} v{f['version']}{smoke}", style="bold"),
                    Syntax("\n".join(shown), "python", line_numbers=True, theme="monokai")]
            if len(shown) < len(lines):
                out.append(Text(f"… {len(lines) - len(shown)} more lines (--verbose shows all)", style="dim"))
    elif name in PAID and r.get("finetune_rounds"):
        rounds = Table("round", "model", "held-out balanced acc before", "after", "kept", box=None, padding=(0, 2))
        for f in r["finetune_rounds"]:
            rounds.add_row(str(f["round"]), f["model"], str(f["acc_before"]), str(f["acc_after"]), str(f["kept"]))
        out.append(rounds)
    return out


def _confirm_panel(e: dict[str, Any]) -> Panel:
    parts: list[RenderableType] = []
    for p in e.get("plans", []):
        est = p.get("estimate") or {}
        parts.append(Text.assemble((p["tool"], "bold"), "  ", (_args(p["args"]), "dim")))
        if "error" in est:
            parts.append(Text(f"no estimate: {est['error']}", style="red"))
            continue
        parts.append(Text(f"settings: {_args(est['settings'])}", style="dim"))
        parts.append(Text.assemble(
            "estimate: ", (f"{est['rows']} rows × {est['hard_share']:.0%} hard", "bold"),
            f" ({est['hard_share_from']}) ≈ ", (f"{est['est_llm_calls']} LLM calls", "bold"),
            f" × {est['tokens_per_call'][0]}+{est['tokens_per_call'][1]} tokens ≈ ",
            (f"${est['est_cost_usd']:.6f}", "bold yellow"), f" at {est['price_model']} prices"))
    return Panel(Group(*parts, Text(e.get("question", "Start it?"), style="bold")), title="confirm",
                 title_align="left", border_style="yellow")


def read_trace(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
