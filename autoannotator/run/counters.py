"""Live counters of a run (rows, LLM calls, tokens, cost, agreement, pool vs beta) from the runner's
progress events: what the chat's trace and any other observer show while a run goes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoannotator.config import Settings
from autoannotator.run.cache import AnswerCache
from autoannotator.run.paths import RunPaths
from autoannotator.run.plan import RunPlan
from autoannotator.verify.base import Verifier


class RunCounters:
    """Passes each runner event on as a ``run_event``, plus a ``counters`` snapshot at start and per batch."""

    def __init__(self, settings: Settings, emit: Callable[[dict], None]) -> None:
        self.settings, self.emit = settings, emit
        self.verifier: Verifier | None = None  # a stand-in verifier keeps its own ledger (no answer cache to read)
        self.run_dir: Path | None = None
        self.run_id = ""
        self.c: dict[str, Any] = {"done": 0, "total": None, "llm_rows": 0, "seen": 0, "pool": 0,
                                  "beta": settings.beta}

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            self.run_dir = Path(event["run_dir"])
            plan = RunPlan.load(self.run_dir)
            self.run_id = plan.run_id
            self.c.update(done=event["rows_done"], total=event["n_rows"],
                          beta=int(plan.settings.get("beta", self.settings.beta)))
        elif kind in ("verified", "accepted"):
            self.c["pool"] = event["pool_size"]
        self.emit({"type": "run_event", **event})
        if kind == "accepted":
            for key, n in (("done", event["n"]), ("seen", event["n"]), ("llm_rows", event["llm"])):
                self.c[key] += n
        if kind in ("start", "accepted"):
            seen = self.c["seen"]
            self.emit({"type": "counters", "run_id": self.run_id, **self.c, **self._usage(),
                       "agreement": round(1 - self.c["llm_rows"] / seen, 4) if seen else None})

    def _usage(self) -> dict[str, Any]:
        if self.verifier is not None:
            u = self.verifier.ledger()
        else:  # the LLM verifier writes every paid answer to the run's cache as it comes
            u = AnswerCache(RunPaths(self.run_dir or Path(".")).answers, create=False).ledger(self.run_id)
        return {"llm_calls": u.calls, "tokens_in": u.tokens_in, "tokens_out": u.tokens_out,
                "cost_usd": round(self.settings.prices.cost(u.tokens_in, u.tokens_out), 6)}
