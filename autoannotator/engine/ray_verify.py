"""The verifier's LLM calls on Ray workers (``--engine ray`` with an endpoint LLM).

The orchestrator keeps the answer cache and the ledger: ``LLMVerifier.averify`` looks every prompt up in
the cache first, sends only the missing ones out, at most ``llm_max_concurrency`` in flight in all, and
writes each answer (and every extra request an attempt cost: invalid answers, timeouts) the moment its
worker returns it. A worker holds no state worth keeping: it asks the endpoint (retries and backoff
included, the verifier's own ``_ask``) and hands the outcome back. So an answer is never paid twice,
across workers (one request per distinct prompt, chosen before dispatch) or after a crash (what was
written is found in the cache; only the requests in flight at the crash are lost, as on the local engine).

Workers are async Ray actors that take no CPU share (they wait on the network; the model actor pools have
the CPUs), one per CPU of the cluster up to the concurrency, each running its share of the concurrent
requests. They build their own client from the endpoint's URL, model and key: the key travels to them
in the actor's constructor arguments (on a cluster, through Ray's control store). The embedded LLM stays
in the orchestrator: its server listens on the orchestrator's loopback only.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from langchain_core.messages import BaseMessage

from autoannotator.config import Settings
from autoannotator.errors import LLMUnavailable
from autoannotator.llm.factory import LLMHandle
from autoannotator.task import TaskSpec
from autoannotator.verify import llm as llm_verify


class _LLMCaller:
    """One Ray worker's LLM client; asks about one prompt per call, several calls at once (async actor)."""

    def __init__(self, base_url: str, model: str, api_key: str | None, model_id: str, task: TaskSpec,
                 run_id: str, settings: Settings, max_connections: int):
        from autoannotator.llm.factory import verifier_chooser

        chooser = verifier_chooser(base_url, model, api_key, task.label_names,
                                   timeout_s=float(settings.llm_timeout_s), max_connections=max_connections)
        self.verifier = llm_verify.LLMVerifier(
            chooser, model_id, task, None, run_id, max_retries=settings.llm_max_retries,
            max_text_chars=settings.llm_max_text_chars, backoff_base_s=settings.llm_backoff_base_s,
            backoff_max_s=settings.llm_backoff_max_s, retry_after_cap_s=settings.llm_retry_after_cap_s)
        self.asked = 0  # prompts this worker was given: for tests and benchmarks

    def _extras(self, key: str) -> list[tuple]:
        log = self.verifier._cache
        mine = [r for r in log.records if r[0] == key]
        log.records = [r for r in log.records if r[0] != key]
        return mine

    async def ask(self, key: str, messages: list[BaseMessage]) -> tuple[str, Any, list[tuple]]:
        """(outcome, value, extra requests): ``ok`` with (label, tokens_in, tokens_out, estimated),
        ``no_label``, ``unavailable`` or ``error`` with a one-line message."""
        self.asked += 1
        try:
            value = await self.verifier._ask(key, messages)
        except llm_verify._NoValidLabel:
            return "no_label", None, self._extras(key)
        except LLMUnavailable as exc:
            return "unavailable", str(exc), self._extras(key)
        except Exception as exc:  # not transient (a 4xx): the orchestrator raises it
            return "error", llm_verify._one_line(exc), self._extras(key)
        return "ok", value, self._extras(key)

    def stats(self) -> dict[str, int]:
        import os

        return {"pid": os.getpid(), "asked": self.asked}


class RayAsker:
    """``LLMVerifier.asker`` on Ray: round-robin over the callers; writes their extra requests to the ledger."""

    def __init__(self, verifier: llm_verify.LLMVerifier, llm: LLMHandle, settings: Settings, ray: Any,
                 n_workers: int | None = None):
        self.verifier = verifier
        self.ray = ray
        cpus = int(float(ray.cluster_resources().get("CPU", 1.0)))
        n = max(1, min(verifier.max_concurrency, n_workers or cpus))
        per = math.ceil(verifier.max_concurrency / n)
        caller = ray.remote(_LLMCaller).options(num_cpus=0, max_concurrency=per)
        self.workers = [caller.remote(llm.base_url, llm.model, llm.api_key, verifier.model_id, verifier.task,
                                      verifier.run_id, settings, per) for _ in range(n)]
        self._turn = itertools.cycle(self.workers)

    async def __call__(self, key: str, messages: list[BaseMessage]) -> tuple[str, int, int, bool]:
        outcome, value, extras = await next(self._turn).ask.remote(key, messages)
        for record in extras:  # answered attempts without a usable label, timeouts: paid for, or maybe
            self.verifier._cache.log_extra(*record)
        if outcome == "ok":
            label, t_in, t_out, estimated = value
            return str(label), int(t_in), int(t_out), bool(estimated)
        if outcome == "no_label":
            raise llm_verify._NoValidLabel(key)
        if outcome == "unavailable":
            raise LLMUnavailable(value)
        raise LLMUnavailable(f"the LLM ({self.verifier.model_id}) refused a request from a Ray worker: {value}")

    def worker_stats(self) -> list[dict[str, int]]:
        """Per worker: its process id and how many prompts it was given."""
        return self.ray.get([w.stats.remote() for w in self.workers])

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
        self.workers = []


def spread_verifier(verifier: Any, llm: LLMHandle | None, settings: Settings, ray: Any) -> RayAsker | None:
    """Send ``verifier``'s uncached prompts to Ray workers, when it is an endpoint LLM's verifier."""
    if llm is None or llm.embedded or not isinstance(verifier, llm_verify.LLMVerifier):
        return None
    asker = RayAsker(verifier, llm, settings, ray)
    verifier.asker = asker
    return asker
