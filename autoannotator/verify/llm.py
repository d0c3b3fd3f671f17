"""LLM re-verification of the samples the small models disagree on.

One request per distinct prompt (sent by ``llm/choose.py``), its answer constrained to the task's labels
(a ``Literal`` schema sent as a forced function call: grammar-constrained on llama.cpp), retried with
backoff on transient errors (``llm/retry.py``: connection, timeout, 429, 5xx, a malformed body, empty
``choices``; a server's ``Retry-After`` is honoured, capped), bounded in concurrency, and written to the run's
answer cache (``run/cache.py``) the moment it arrives, so that no sample is ever paid for twice.

Every request the endpoint answered is counted: the answer kept is the cache entry; an answer with no
valid label, an unusable body, or a duplicate (another process paid first) is an extra request in
the ledger; an attempt that timed out is counted apart (the server may or may not have billed it).
A row that never gets a valid label after its attempts comes back ``failed`` (its row keeps the
models' label as ``llm_failed``) instead of ending the run; only an endpoint that keeps failing
transiently ends it (``LLMUnavailable``, resumable).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from autoannotator.costs import LLMUsage
from autoannotator.errors import LLMUnavailable
from autoannotator.llm.choose import ChatModelChooser, LabelAnswer, LabelChooser
from autoannotator.llm.loop import run_on_llm_loop
from autoannotator.llm.retry import (EndpointConnectionError, EndpointStatusError, EndpointTimeout, is_transient,
                                     retry_after_seconds)
from autoannotator.run.cache import Answer, AnswerCache, GroupWriter
from autoannotator.task import TaskSpec
from autoannotator.verify.base import Example, VerifyResult
from autoannotator.verify.prompt import VerifyPrompt

__all__ = ["LLMVerifier", "VerifyPrompt", "VerifyResult", "prompt_key"]


def prompt_key(model_id: str, labels: list[str], messages: list[BaseMessage]) -> str:
    """The cache key of one verification request: the model, the label set and the exact prompt."""
    payload = json.dumps({"model": model_id, "labels": labels, "messages": [[m.type, m.content] for m in messages]},
                         ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")


class _NoValidLabel(Exception):
    """Every attempt got an answer, none with a usable label: the row fails, the run goes on."""


class ExtraLog:
    """Stands in for the answer cache where there is none (a Ray worker asking for the orchestrator): the
    extra requests ``_ask`` logs are kept here and travel back with the answer, for the orchestrator to
    write to the run's ledger."""

    def __init__(self) -> None:
        self.records: list[tuple] = []

    def log_extra(self, *record: Any) -> None:
        self.records.append(record)

    def take(self) -> list[tuple]:
        out, self.records = self.records, []
        return out


class _Stopped(Exception):
    """Interrupted between two attempts: the row is simply not done (a resume asks again)."""


class LLMVerifier:
    def __init__(self, chat: LabelChooser | BaseChatModel, model_id: str, task: TaskSpec, cache_path: Path | None,
                 run_id: str,
                 max_concurrency: int = 4, max_retries: int = 4, max_text_chars: int = 4000,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 30.0, retry_after_cap_s: float = 60.0,
                 grace_s: float = 10.0) -> None:
        """``chat``: the endpoint's ``LabelChooser`` (``LLMHandle.chooser``), or any LangChain chat model.
        ``cache_path`` None: no cache (a Ray worker's verifier; its extra requests collect in an ExtraLog)."""
        self.model_id = model_id
        self.task = task
        self.run_id = run_id
        self.max_concurrency = max(1, max_concurrency)
        self.max_retries = max(0, max_retries)
        self.max_text_chars = max_text_chars
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_cap_s = retry_after_cap_s
        self.grace_s = grace_s  # on Ctrl-C/SIGTERM: how long requests in flight may finish (and be kept)
        self.labels = task.label_names
        self._by_lower = {name.lower(): name for name in self.labels}
        self.chooser: LabelChooser = ChatModelChooser(chat, self.labels) if isinstance(chat, BaseChatModel) else chat
        self.prompt = VerifyPrompt(task, max_text_chars)
        self._cache: Any = AnswerCache(cache_path) if cache_path is not None else ExtraLog()
        self._stopping = threading.Event()
        self._examples: dict[int, tuple[Example, ...]] = {}
        # Who asks the endpoint about a prompt the cache lacks: this process (``_ask``), or Ray workers
        # (``engine/ray_verify.py``); either way the answer is written here, as it returns.
        self.asker: Callable[[str, list[BaseMessage]], Awaitable[tuple[str, int, int, bool]]] = self._ask

    # -- prompts and keys ---------------------------------------------------------------------------
    def set_examples(self, examples: Mapping[int, Sequence[Example]]) -> None:
        """The few-shot examples of the next ``verify``, per row id (replacing any earlier ones): they
        are part of the prompt, hence of its cache key."""
        self._examples = {int(k): tuple(v) for k, v in examples.items()}

    def messages(self, text: str, examples: Sequence[Example] = ()) -> list[BaseMessage]:
        return self.prompt.messages(text, examples)

    def _key(self, messages: list[BaseMessage]) -> str:
        return prompt_key(self.model_id, self.labels, messages)

    # -- public API ---------------------------------------------------------------------------------
    def verify(self, items: list[tuple[int, str]]) -> list[VerifyResult]:
        """Label ``(row_id, text)`` pairs; results in input order. Blocks; safe inside a running loop.
        Interrupted (Ctrl-C, SIGTERM), it starts no new request and lets those in flight finish for
        up to ``grace_s``: what they answer is stored, so a resume does not pay for it again."""
        if not items:
            return []
        self._stopping.clear()
        return run_on_llm_loop(self.averify(items), on_interrupt=self._stopping.set, grace_s=self.grace_s)

    def ledger(self, run_id: str | None = None) -> LLMUsage:
        return self._cache.ledger(run_id or self.run_id)

    async def averify(self, items: list[tuple[int, str]]) -> list[VerifyResult]:
        prepared = [(row_id, self.messages(text, self._examples.get(row_id, ()))) for row_id, text in items]
        keys = [self._key(msgs) for _, msgs in prepared]
        hits = self._cache.get_many(sorted(set(keys)))
        results: list[VerifyResult | None] = [None] * len(items)
        pending: dict[str, list[int]] = {}  # one request per distinct prompt, even within a batch
        for i, key in enumerate(keys):
            if key in hits:
                label, payer = hits[key]
                results[i] = VerifyResult(row_id=prepared[i][0], label=label, tokens_in=0, tokens_out=0,
                                          cached=True, paid_by_run=payer)
            else:
                pending.setdefault(key, []).append(i)

        semaphore = asyncio.Semaphore(self.max_concurrency)
        writer = GroupWriter(self._cache)

        async def one(key: str, positions: list[int]) -> None:
            async with semaphore:
                if self._stopping.is_set():  # interrupted: start nothing new
                    return
                msgs = prepared[positions[0]][1]
                try:
                    label, t_in, t_out, estimated = await self.asker(key, msgs)
                except _Stopped:
                    return
                except _NoValidLabel:
                    for i in positions:
                        results[i] = VerifyResult(row_id=prepared[i][0], label=None, tokens_in=0, tokens_out=0,
                                                  cached=False, paid_by_run=self.run_id, failed=True)
                    return
                # Committed before the slot goes to the next request: a crash loses only the answers still
                # in flight. Answers that come back together share one commit, in a thread (a commit
                # takes milliseconds, and would stall every request on the event loop meanwhile).
                if not await writer.put(Answer(key, self.model_id, label, t_in, t_out, estimated, self.run_id)):
                    # Another process answered this prompt first: this answer was paid for too.
                    self._cache.log_extra(key, self.model_id, self.run_id, "duplicate", t_in, t_out, estimated)
            first, *dupes = positions
            results[first] = VerifyResult(row_id=prepared[first][0], label=label, tokens_in=t_in,
                                          tokens_out=t_out, cached=False, paid_by_run=self.run_id,
                                          tokens_estimated=estimated)
            for i in dupes:
                results[i] = VerifyResult(row_id=prepared[i][0], label=label, tokens_in=0, tokens_out=0,
                                          cached=True, paid_by_run=self.run_id)

        tasks = [asyncio.ensure_future(one(key, positions)) for key, positions in pending.items()]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [r for r in results if r is not None]  # interrupted: the caller re-raises anyway

    # -- one sample ---------------------------------------------------------------------------------
    async def _ask(self, key: str, messages: list[BaseMessage]) -> tuple[str, int, int, bool]:
        """(label, tokens_in, tokens_out, estimated) of the attempt whose answer is kept. Every other
        answered attempt goes to the ledger as an extra request as soon as it comes back."""
        attempts = self.max_retries + 1
        raws: list[tuple[LabelAnswer, int, int, bool]] = []
        last_error: BaseException | None = None
        for attempt in range(attempts):
            if self._stopping.is_set():
                raise _Stopped(key)
            try:
                answer = await self.chooser.choose(messages)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                last_error = exc
                self._count_failed_attempt(key, exc, messages)
                if attempt + 1 < attempts:
                    await asyncio.sleep(self._delay(attempt, exc))
                continue
            a, b, est = self._usage(answer, messages)
            label = self._tool_label(answer)
            if label is not None:
                self._log_invalid(key, raws)
                return label, a, b, est
            raws.append((answer, a, b, est))  # an invalid answer: ask again at once, the endpoint itself is fine
        for j in range(len(raws) - 1, -1, -1):  # last resort: an answer's plain text names a label
            label = self._text_label(raws[j][0])
            if label is not None:
                _, a, b, est = raws[j]
                self._log_invalid(key, raws[:j] + raws[j + 1:])
                return label, a, b, est
        if raws:  # the endpoint answers, but never with a label: this row fails, the run goes on
            self._log_invalid(key, raws)
            raise _NoValidLabel(key)
        assert last_error is not None
        raise LLMUnavailable(f"the LLM ({self.model_id}) kept failing after {attempts} attempts: "
                             f"{_one_line(last_error)}")

    def _log_invalid(self, key: str, raws: list[tuple[LabelAnswer, int, int, bool]]) -> None:
        """Answers without a usable label were paid for too: each is an extra request in the ledger."""
        for _, a, b, est in raws:
            self._cache.log_extra(key, self.model_id, self.run_id, "invalid_answer", a, b, est)

    def _count_failed_attempt(self, key: str, exc: BaseException, messages: list[BaseMessage]) -> None:
        if isinstance(exc, (EndpointTimeout, openai.APITimeoutError)):  # sent, maybe processed and billed
            self._cache.log_extra(key, self.model_id, self.run_id, "timeout", 0, 0, True)
        elif not isinstance(exc, (EndpointStatusError, EndpointConnectionError, openai.APIStatusError,
                                  openai.APIConnectionError)):
            # A 200 whose body was unusable (malformed JSON, no choices): answered, so maybe billed.
            chars_in = sum(len(str(m.content)) for m in messages)
            self._cache.log_extra(key, self.model_id, self.run_id, "unusable_answer", max(1, chars_in // 4), 0, True)

    def _delay(self, attempt: int, exc: BaseException) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt) * random.uniform(0.5, 1.5)
        asked = retry_after_seconds(exc, cap_s=self.retry_after_cap_s)
        # The server said exactly how long to wait: never retry before that, never wait past the cap.
        return delay if asked is None else max(asked, min(delay, asked * 1.5 + 0.05))

    def _tool_label(self, answer: LabelAnswer) -> str | None:
        for value in answer.tool_labels:
            if value in self.labels:
                return value
        # A tool call whose label differs only in case or spacing failed the Literal; accept it.
        for value in answer.tool_labels:
            if value.strip().lower() in self._by_lower:
                return self._by_lower[value.strip().lower()]
        return None

    def _text_label(self, answer: LabelAnswer) -> str | None:
        text = answer.content.strip().strip("\"'`.").strip()
        if text in self.labels:
            return text
        return self._by_lower.get(text.lower())

    @staticmethod
    def _usage(answer: LabelAnswer, messages: list[BaseMessage]) -> tuple[int, int, bool]:
        if answer.tokens_in is not None and answer.tokens_out is not None:
            return answer.tokens_in, answer.tokens_out, False
        chars_in = sum(len(str(m.content)) for m in messages)
        return max(1, chars_in // 4), max(1, (len(answer.content) + answer.tool_args_chars) // 4), True
