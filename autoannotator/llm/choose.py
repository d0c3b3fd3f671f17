"""One forced function call that picks a label: the request the verifier sends for every hard row.

Two implementations of ``LabelChooser``:

* ``EndpointChooser`` speaks the OpenAI chat-completions protocol straight over one pooled httpx
  client. It is what every configured endpoint and the embedded server get (``LLMHandle.chooser``):
  the verifier sends thousands of identical, tiny requests, and the general chat stack (LangChain's
  runnable, openai's request pipeline, structured-output parsing) cost about 8 ms of CPU per call, half
  the throughput a bare client reaches against a 200 ms endpoint (docs/benchmarks.md, "LLM calls/s").
  Its request is the one ``ChatOpenAI.with_structured_output(schema, method="function_calling")``
  sends: the same tool, the same forced ``tool_choice``, so grammar-constrained servers behave alike.
  One field differs on purpose: a length cap goes as ``max_tokens``, which llama.cpp's server reads
  (LangChain sends ``max_completion_tokens``, which it ignores).
* ``ChatModelChooser`` wraps any LangChain chat model (scripted models in tests, a model a notebook
  user passes in) through ``with_structured_output``.

Faults come out as the exceptions ``llm/retry.py`` classifies: ``EndpointStatusError`` (with the
response headers, for Retry-After), ``EndpointTimeout``, ``EndpointConnectionError``, ``UnusableAnswer``
(a 200 body that is not a completion) and ``EmptyChoices``. A status no retry can fix (400, 401, 403,
404, ...) is ``LLMUnavailable``: one line, the run stops resumable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field, create_model

from autoannotator.errors import LLMUnavailable
from autoannotator.llm.retry import (RETRY_STATUS, EmptyChoices, EndpointConnectionError, EndpointStatusError,
                                     EndpointTimeout, UnusableAnswer)

TOOL_NAME = "ChooseLabel"  # label_schema's model name: the function the model is made to call
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


@dataclass(frozen=True)
class LabelAnswer:
    """What one answered request said: the ``label`` arguments of its tool calls (the model's own
    spelling: the verifier maps case and spacing), its plain text, and the usage the endpoint reported
    (None when it reported none)."""

    tool_labels: tuple[str, ...] = ()
    content: str = ""
    tokens_in: int | None = None
    tokens_out: int | None = None
    tool_args_chars: int = 0  # the length of the calls' arguments: an estimate of the output's tokens


@runtime_checkable
class LabelChooser(Protocol):
    async def choose(self, messages: list[BaseMessage]) -> LabelAnswer: ...


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200]
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return " ".join(str(message or "").split())[:200]


def label_schema(labels: Sequence[str]) -> type[BaseModel]:
    """A one-field schema whose ``label`` may only be one of the task's labels."""
    return create_model(
        TOOL_NAME,
        __doc__="Record the one label that fits the text.",
        label=(Literal[tuple(labels)], Field(description=f"exactly one of: {', '.join(labels)}")),
    )


def label_tool(labels: Sequence[str]) -> dict[str, Any]:
    """The forced function's definition, exactly as LangChain sends ``label_schema(labels)``."""
    return convert_to_openai_tool(label_schema(labels))


class EndpointChooser:
    """The chat-completions request for one label, over one keep-alive connection pool.

    The pool belongs to the event loop of the first call (httpx's async client cannot move between
    loops): the verifier's calls all run on the shared LLM loop (``llm/loop.py``), a Ray worker's on its
    actor's loop."""

    def __init__(self, base_url: str, model: str, api_key: str | None, labels: Sequence[str], *,
                 timeout_s: float, max_connections: int, max_tokens: int | None = None,
                 trust_env: bool = True) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key or 'none'}", "Content-Type": "application/json"}
        self._tool = label_tool(labels)
        self._max_tokens = max_tokens
        self._timeout = httpx.Timeout(timeout_s, pool=None)  # waiting for a free connection is not a fault
        self._limits = httpx.Limits(max_connections=max(1, max_connections),
                                    max_keepalive_connections=max(1, max_connections))
        self._trust_env = trust_env
        self._client: httpx.AsyncClient | None = None

    def payload(self, messages: list[BaseMessage]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": _ROLES.get(m.type, m.type), "content": m.content} for m in messages],
            "model": self.model, "stream": False, "temperature": 0.0,
            "parallel_tool_calls": False,
            "tool_choice": {"type": "function", "function": {"name": TOOL_NAME}},
            "tools": [self._tool],
        }
        if self._max_tokens is not None:
            body["max_tokens"] = self._max_tokens
        return body

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, limits=self._limits, trust_env=self._trust_env)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def choose(self, messages: list[BaseMessage]) -> LabelAnswer:
        content = json.dumps(self.payload(messages), ensure_ascii=False).encode("utf-8")
        try:
            response = await self._http().post(self.url, content=content, headers=self._headers)
        except httpx.TimeoutException as exc:
            raise EndpointTimeout(f"no answer from {self.url} in time ({type(exc).__name__})") from None
        except httpx.TransportError as exc:  # refused, reset, DNS, a proxy, a protocol error
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise EndpointConnectionError(f"cannot reach {self.url}: {reason}") from None
        if response.status_code != 200:
            message = _error_message(response)
            if response.status_code >= 500 or response.status_code in RETRY_STATUS:
                raise EndpointStatusError(response.status_code, message, response.headers)
            hint = " (check the API key)" if response.status_code in (401, 403) else ""
            raise LLMUnavailable(f"the LLM endpoint at {self.url} refused the request: HTTP "
                                 f"{response.status_code}{': ' + message if message else ''}{hint}")
        return parse_completion(response.content)


def parse_completion(body: bytes) -> LabelAnswer:
    """The label arguments, text and usage of a chat-completion body."""
    try:
        data = json.loads(body)
    except ValueError:
        raise UnusableAnswer(f"the answer is not JSON: {body[:80]!r}") from None
    if not isinstance(data, dict):
        raise UnusableAnswer("the answer is not a JSON object")
    choices = data.get("choices")
    if not choices:
        raise EmptyChoices("the answer has no choices")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        raise UnusableAnswer("the answer's first choice has no message")
    labels: list[str] = []
    args_chars = 0
    for call in message.get("tool_calls") or []:
        arguments = ((call or {}).get("function") or {}).get("arguments")
        if not isinstance(arguments, str):
            continue
        args_chars += len(arguments)
        try:
            args = json.loads(arguments)
        except ValueError:  # a malformed call is an answer without a label, as LangChain reads it
            continue
        label = args.get("label") if isinstance(args, dict) else None
        if isinstance(label, str):
            labels.append(label)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    t_in, t_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    reported = isinstance(t_in, int) and isinstance(t_out, int) and (t_in or t_out)
    text = message.get("content")
    return LabelAnswer(tuple(labels), text if isinstance(text, str) else "",
                       t_in if reported else None, t_out if reported else None, args_chars)


class ChatModelChooser:
    """Any LangChain chat model, asked through its structured output (a forced function call)."""

    def __init__(self, chat: BaseChatModel, labels: Sequence[str]) -> None:
        self._structured = chat.with_structured_output(label_schema(labels), method="function_calling",
                                                       include_raw=True)

    async def choose(self, messages: list[BaseMessage]) -> LabelAnswer:
        raw = (await self._structured.ainvoke(messages)).get("raw")
        # The labels as the model wrote them, from the raw calls (the parsed schema is built from the
        # first of them, and is None when its label fails the Literal: the verifier maps case and spacing).
        labels: list[str] = []
        args_chars = 0
        for call in getattr(raw, "tool_calls", None) or []:
            args = call.get("args") or {}
            args_chars += len(json.dumps(args))
            if isinstance(args.get("label"), str):
                labels.append(args["label"])
        meta = getattr(raw, "usage_metadata", None) or {}
        t_in, t_out = meta.get("input_tokens"), meta.get("output_tokens")
        reported = bool(t_in or t_out)
        content = getattr(raw, "content", None)
        return LabelAnswer(tuple(labels), content if isinstance(content, str) else "",
                           int(t_in or 0) if reported else None, int(t_out or 0) if reported else None, args_chars)
