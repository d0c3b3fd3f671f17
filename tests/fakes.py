"""A scripted chat model for tests: no network, every response decided by the test.

``ScriptedChatModel(script=[...])`` answers each call with the next scripted item:

* an ``AIMessage`` (returned as is: leave out ``usage_metadata`` to test token estimation),
* a ``dict`` (the arguments of a tool call: what ``with_structured_output`` parses),
* an exception instance (raised: simulate a 429, a timeout, a 500),
* a callable ``f(messages) -> one of the above`` (answer depending on the prompt).

It records every call's input messages and the peak number of concurrent calls;
``assert_complete()`` fails when scripted responses were left unused.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import openai
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import BaseModel, PrivateAttr, ValidationError

Scripted = AIMessage | dict | BaseException | Callable[[list[BaseMessage]], Any]
_ids = itertools.count()


def rate_limit_error() -> openai.RateLimitError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return openai.RateLimitError("rate limited", response=httpx.Response(429, request=request), body=None)


def timeout_error() -> openai.APITimeoutError:
    return openai.APITimeoutError(request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"))


def server_error(status: int = 503) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return openai.APIStatusError("server error", response=httpx.Response(status, request=request), body=None)


def _usage(messages: Sequence[BaseMessage], out_tokens: int) -> dict[str, int]:
    # Deterministic and non-zero, so tests can check that tokens are taken from usage_metadata.
    tokens_in = 10 + sum(len(str(m.content)) for m in messages) // 4
    return {"input_tokens": tokens_in, "output_tokens": out_tokens, "total_tokens": tokens_in + out_tokens}


class ScriptedChatModel(GenericFakeChatModel):
    delay_s: float = 0.0  # per call; lets concurrent calls overlap so the peak can be measured

    _script: list[Scripted] = PrivateAttr(default_factory=list)
    _pending: Iterator[Scripted] = PrivateAttr()
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _consumed: int = PrivateAttr(0)
    _in_flight: int = PrivateAttr(0)
    calls: list[list[BaseMessage]] = []
    max_in_flight: int = 0
    bound_tools: list[Any] = []
    tool_choices: list[Any] = []  # per bind_tools call: None (free choice) or the forced tool's name
    structured_schemas: list[Any] = []

    def __init__(self, script: Sequence[Scripted], **kwargs: Any) -> None:
        # GenericFakeChatModel requires `messages`; our own script replaces it.
        super().__init__(messages=iter(()), **kwargs)
        self._script = list(script)
        self._pending = iter(self._script)  # a fresh iterator per instance, never shared
        self.calls = []
        self.bound_tools = []
        self.tool_choices = []
        self.structured_schemas = []

    # -- the script ---------------------------------------------------------------------------------
    def _next(self, messages: list[BaseMessage]) -> AIMessage:
        with self._lock:
            self.calls.append(list(messages))
            try:
                item = next(self._pending)
            except StopIteration:
                raise AssertionError(f"ScriptedChatModel: call {len(self.calls)} but only "
                                     f"{len(self._script)} scripted responses") from None
            self._consumed += 1
        if callable(item) and not isinstance(item, (BaseException, AIMessage, dict)):
            item = item(messages)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, dict):
            args = json.dumps(item)
            return AIMessage(content="", tool_calls=[{"name": "scripted", "args": item, "id": f"call_{next(_ids)}"}],
                             usage_metadata=_usage(messages, max(1, len(args) // 4)))
        if isinstance(item, str):
            return AIMessage(content=item, usage_metadata=_usage(messages, max(1, len(item) // 4)))
        assert isinstance(item, AIMessage), f"unsupported scripted response: {item!r}"
        return item

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self._enter()
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            return ChatResult(generations=[ChatGeneration(message=self._next(messages))])
        finally:
            self._leave()

    async def _agenerate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        # Truly async (the base class would run _generate in a thread pool, capping concurrency).
        self._enter()
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return ChatResult(generations=[ChatGeneration(message=self._next(messages))])
        finally:
            self._leave()

    def assert_complete(self) -> None:
        left = len(self._script) - self._consumed
        assert left == 0, f"ScriptedChatModel: {left} scripted responses were never used"

    # -- tools and structured output (the base class raises NotImplementedError) --------------------
    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Runnable:
        self.bound_tools.extend(tools)
        self.tool_choices.append(tool_choice)
        return self

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable:
        self.structured_schemas.append(schema)

        def parse(raw: AIMessage) -> Any:
            parsed, error = None, None
            if raw.tool_calls:
                args = raw.tool_calls[0]["args"]
                try:
                    parsed = schema.model_validate(args) if isinstance(schema, type) and issubclass(
                        schema, BaseModel) else args
                except ValidationError as exc:
                    error = exc
            if include_raw:
                return {"raw": raw, "parsed": parsed, "parsing_error": error}
            if error is not None:
                raise error
            return parsed

        async def aparse(messages: Any) -> Any:
            return parse(await self.ainvoke(messages))

        return RunnableLambda(lambda messages: parse(self.invoke(messages)), afunc=aparse)
