"""The human as verifier: the hard samples are asked in the terminal, one at a time (the paper's strongest setting).

Keys: a number or a label's first letter (when no other label, and no command, starts with it) or the
label's full name; ``s`` skip, ``u`` undo, ``q`` quit. A skipped sample is asked again at the end of the
batch; skipped twice, it is recorded as skipped and left out of the answers, so the run keeps the
models' majority label for it (label_source ``slm_consensus``; empty if every model abstained). Undo
reaches back to the first answer of the current batch: earlier batches are already accepted.

Every answer is written at once to the run's ``llm_cache.sqlite`` (the LLM verifier's format, model_id
``human``), so quitting or a crash loses nothing and a resumed run never asks the same sample again.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from autoannotator.costs import LLMUsage
from autoannotator.errors import UserError
from autoannotator.run.cache import HUMAN, AnswerCache
from autoannotator.run.paths import RunPaths
from autoannotator.task import TaskSpec
from autoannotator.verify.base import VerifyResult

_COMMANDS = {"s", "u", "q"}


def human_key(text: str, labels: Sequence[str]) -> str:
    payload = json.dumps([HUMAN, text, list(labels)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def used_human(cache_path: Path) -> bool:
    """Whether a human answered (or skipped) samples of the run owning this cache: its resume asks a human again."""
    return AnswerCache(cache_path, create=False).used_human()


class HumanVerifier:
    model_id = HUMAN

    def __init__(self, task: TaskSpec, cache_path: Path, run_id: str, *, input: IO[str] | None = None,
                 console: Console | None = None, hints: Callable[[int], dict | None] | None = None,
                 live: Any = None) -> None:
        self.labels = task.label_names
        self.run_id = run_id
        self._input = input  # None: sys.stdin read at ask time (a test runner may swap it)
        self.console = console or Console(stderr=True)
        self._hints_fn = hints
        self._hints: dict[int, dict] = {}
        self._live = live  # a rich Progress/Live to pause while asking: redraws would garble the prompt
        self._cache = AnswerCache(cache_path)
        firsts = [name[0].lower() for name in self.labels]
        self._by_letter = {f: name for f, name in zip(firsts, self.labels)
                           if f.isalpha() and f not in _COMMANDS and firsts.count(f) == 1}
        self._by_name = {name.lower(): name for name in self.labels}
        self.asked: list[int] = []  # row ids put in front of the human, in order (tests, audit)

    def set_hints(self, hints: dict[int, dict]) -> None:
        """The graph may hand over the SLM votes of the hard rows just before ``verify``."""
        self._hints = dict(hints)

    def ledger(self, run_id: str | None = None) -> LLMUsage:
        return LLMUsage(calls=self._cache.ledger(run_id or self.run_id, model_id=HUMAN).calls)

    # -- asking -------------------------------------------------------------------------------------
    def verify(self, items: list[tuple[int, str]]) -> list[VerifyResult]:
        """Answers in input order; a sample skipped twice is left out (the graph keeps the SLM majority)."""
        keys = [human_key(text, self.labels) for _, text in items]
        hits = self._cache.get_many(sorted(set(keys)))
        skipped = self._skipped(keys)
        pending: dict[str, list[int]] = {}  # one question per distinct text, as the LLM verifier does
        for i, key in enumerate(keys):
            if key not in hits and key not in skipped:
                pending.setdefault(key, []).append(i)
        if pending:
            self._pause(True)
            try:
                hits.update(self._session(items, pending))
            finally:
                self._pause(False)
        out = []
        for i, (row_id, _) in enumerate(items):
            if keys[i] in hits:
                label, payer = hits[keys[i]]
                fresh = keys[i] in pending and pending[keys[i]][0] == i
                out.append(VerifyResult(row_id=row_id, label=label, tokens_in=0, tokens_out=0, cached=not fresh,
                                        paid_by_run=payer))
        return out

    def _session(self, items: list[tuple[int, str]], pending: dict[str, list[int]]) -> dict[str, tuple[str, str]]:
        order = list(pending)  # keys to ask; a first skip appends the key again (asked at the end)
        outcome: list[str] = []  # per position in `order`: "answer" | "skip1" | "skip2"
        answers: dict[str, tuple[str, str]] = {}
        while len(outcome) < len(order):
            pos, key = len(outcome), order[len(outcome)]
            first = pending[key][0]
            row_id, text = items[first]
            retry = order.index(key) < pos
            reply = self._ask(row_id, text, pos, len(order), retry)
            if reply == "q":
                self.console.print(f"[yellow]stopped[/]: {self.ledger().calls} answer(s) saved; resume with "
                                   f"`autoannotator runs resume {escape(str(self._cache.path.parent))}`")
                raise KeyboardInterrupt
            if reply == "u":
                if not outcome:
                    self.console.print("[dim]nothing to undo in this batch (earlier batches are accepted)[/]")
                    continue
                self._undo(order, outcome, answers)
            elif reply == "s":
                outcome.append("skip2" if retry else "skip1")
                if retry:
                    self._record_skip(key, row_id)
                else:
                    order.append(key)
            else:
                self._cache.put(key, HUMAN, reply, 0, 0, False, self.run_id)
                answers[key] = (reply, self.run_id)
                outcome.append("answer")
        return answers

    def _undo(self, order: list[str], outcome: list[str], answers: dict[str, tuple[str, str]]) -> None:
        # Strictly last-in first-out, so a first skip's re-ask is always the last entry of `order`.
        pos, kind = len(outcome) - 1, outcome.pop()
        key = order[pos]
        if kind == "answer":
            answers.pop(key, None)
            self._cache.forget(key)
        elif kind == "skip1":
            order.pop()
        else:
            self._cache.forget_skip(key)
        self.console.print("[dim]undone[/]")

    def _ask(self, row_id: int, text: str, pos: int, total: int, retry: bool) -> str:
        """One valid reply: a label name or one of the commands s, u, q (end of input counts as q)."""
        self.console.rule(f"hard sample {pos + 1} of {total} · row {row_id}" + (" · skipped once" if retry else ""))
        self.console.print(Panel(Text(text or "(empty)"), expand=False))
        hint = self._hints.get(row_id) or (self._hints_fn(row_id) if self._hints_fn else None)
        if hint:
            self.console.print(self._render_hint(hint))
        self.console.print(self._menu(retry))
        self.asked.append(row_id)
        stream = self._input if self._input is not None else sys.stdin
        while True:
            self.console.print("> ", end="")
            line = stream.readline()
            if not line:
                self.console.print()
                return "q"
            if not getattr(stream, "isatty", lambda: False)():  # a terminal echoes the reply; a pipe does not
                self.console.print(Text(line.rstrip("\n")))
            reply = self._parse(line.strip())
            if reply is not None:
                return reply
            self.console.print(f"[red]?[/] {escape(line.strip())} — type 1-{len(self.labels)}, a listed letter, "
                               "a label name, s, u or q")

    def _parse(self, raw: str) -> str | None:
        low = raw.lower()
        if low in _COMMANDS:
            return low
        if low.isdigit() and 1 <= int(low) <= len(self.labels):
            return self.labels[int(low) - 1]
        return self._by_letter.get(low) or self._by_name.get(low)

    def _menu(self, retry: bool) -> Text:
        menu = Text()
        letters = {name: f for f, name in self._by_letter.items()}
        for i, name in enumerate(self.labels, start=1):
            menu.append(f"[{i}] ", style="bold").append(name)
            menu.append(f" ({letters[name]})  " if name in letters else "  ", style="dim")
        menu.append("· s skip" + (" again: keep the models' majority" if retry else "") + " · u undo · q quit",
                    style="dim")
        return menu

    @staticmethod
    def _render_hint(hint: dict) -> Text:
        """Votes as the store records them: {"votes": {model: {"label", "p"}}, "majority", "uncertainty"}."""
        out = Text("models: ", style="dim")
        for name, vote in (hint.get("votes") or {}).items():
            label, p = (vote or {}).get("label"), (vote or {}).get("p")
            out.append(f"{name} → {label if label is not None else 'abstains'}"
                       + (f" ({p:.2f})" if isinstance(p, (int, float)) and label is not None else "") + "  ")
        if hint.get("uncertainty") is not None:
            out.append(f"U {hint['uncertainty']:.3f}", style="dim")
        return out

    # -- persistence --------------------------------------------------------------------------------
    def _skipped(self, keys: Sequence[str]) -> set[str]:
        return self._cache.skipped(keys)

    def _record_skip(self, key: str, row_id: int) -> None:
        self._cache.record_skip(key, row_id, self.run_id)

    def _pause(self, pause: bool) -> None:
        if self._live is not None:
            self._live.stop() if pause else self._live.start()


def human_hooks(choice: str | None, resume_dir: Path | None, console: Console, live: Any = None) -> dict[str, Any]:
    """``runner.label`` keyword arguments for ``--verifier``: {} for the LLM, a HumanVerifier factory for human.

    With no choice, a resumed run keeps the verifier it started with (a human one leaves answers in the cache).
    """
    if choice not in (None, "llm", HUMAN):
        raise UserError(f"--verifier takes llm or human, got {choice!r}")
    if choice is None:
        choice = HUMAN if resume_dir is not None and used_human(RunPaths(resume_dir).answers) else "llm"
    if choice != HUMAN:
        return {}

    def factory(task: TaskSpec, run_dir: Path, run_id: str) -> HumanVerifier:
        return HumanVerifier(task, RunPaths(run_dir).answers, run_id, console=console, live=live)

    return {"verifier_factory": factory, "verifier_info": {"human": True}}
