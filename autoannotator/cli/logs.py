"""How the CLI reports while it works: a rich progress bar (text), or one JSON object per line (json).

``--log-format json`` is for pipelines: every progress event goes to stderr as a JSON line, library
log records too, and the run's summary goes to stdout as one JSON object. Text output follows the
terminal: rich writes no colour or cursor codes when stderr is not a TTY or ``NO_COLOR`` is set.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from autoannotator.cli.progress import LabelProgress
from autoannotator.errors import UserError

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                           "message": record.getMessage()}, ensure_ascii=False)


def setup_logging(*, verbose: bool, quiet: bool, fmt: str) -> None:
    """Library log records to stderr: warnings by default, info with --verbose, errors only with --quiet."""
    if fmt not in FORMATS:
        raise UserError(f"--log-format takes text or json, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    if not verbose:  # chatty HTTP clients log every request at INFO
        for name in ("httpx", "httpcore", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _jsonable(event: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(event, default=str))


class JsonEvents:
    """Progress events as JSON lines on stderr (no bar, no colour)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps({"ts": round(time.time(), 3), **_jsonable(event)}, ensure_ascii=False) + "\n")
        self.stream.flush()


class TextEvents:
    """The progress bar, plus the cost estimate and (with --verbose) the planner's LLM and tool events."""

    def __init__(self, console: Console, quiet: bool, verbose: bool) -> None:
        self.console, self.quiet, self.verbose = console, quiet, verbose
        self.bar = LabelProgress(console, quiet=quiet)
        if not console.is_terminal:  # a bar redrawn in a log file is noise: the notes and the summary stay
            self.bar.progress.disable = True
        self.progress = self.bar.progress

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "estimate" and not self.quiet:
            self.console.print("[cyan]estimate[/] " + "\n         ".join(event.get("lines", [])), highlight=False)
        elif self.verbose and kind in ("llm", "tool"):
            what = ", ".join(event.get("tool_calls") or []) or (str(event.get("content") or "")[:160])
            self.console.print(f"[dim]{kind}[/] {event.get('name') or ''} {what}".rstrip(), highlight=False)
        self.bar(event)


@contextmanager
def event_sink(console: Console, *, quiet: bool, verbose: bool, fmt: str) -> Iterator[Callable[[dict], None]]:
    if fmt == "json":
        yield JsonEvents()
        return
    sink = TextEvents(console, quiet, verbose)
    with sink.bar:
        yield sink
