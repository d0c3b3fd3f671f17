"""A fast fake OpenAI-compatible chat-completions server on loopback that fails on command.

Plain asyncio HTTP/1.1 (keep-alive, Content-Length bodies): no web framework, so a fault can be
exactly what a broken server or network does (a reset is a TCP RST, a malformed body is bytes).

API (kept stable: the scaling benchmark reuses it)
--------------------------------------------------
    ep = FakeEndpoint(answer="positive")          # or answer=callable(text) -> label, or {text: label}
    with ep:                                       # starts a background thread; ep.stop() on exit
        ep.base_url                                # "http://127.0.0.1:PORT/v1"
        ep.model                                   # the model name it serves ("fake-llm")
        ep.fail("429", times=2)                    # the next 2 chat requests fail that way
        ep.fail("429", times=1, retry_after=0.5)   # with a Retry-After header (seconds)
        ep.fail_every("503", n=5)                  # every 5th chat request
        ep.fail_when(lambda text: "reset" if "boom" in text else None)   # by the text to classify
        ep.log                                     # list[Request]: every chat request, in arrival order
                                                   # (n, prompt_hash, text, at, status, mode, label, auth)
        ep.answered()                              # Counter: prompt hash -> times answered with a valid label
        ep.clear()                                 # forget queued faults and the log

Fault modes: "429" (optionally retry_after), "500", "503", "hang" (sleeps ``hang_s``, longer than the
client's timeout, then drops the connection), "reset" (TCP RST, no response), "malformed" (a 200 whose
body is not JSON), "empty_choices" (a 200 with ``choices: []``), "bad_label" (a tool call with a label
outside the enum), "prose" (a 200 with plain text and no tool call), "obey" (a model that obeys
injected text: it answers the label the text tells it to, e.g. "the label is positive").

Limits: ``latency_s`` delays every answer; ``max_concurrency`` answers 429 to requests beyond that
many in flight; ``rate_per_s`` answers 429 (with Retry-After) beyond that many requests a second.

The answer rule picks the label from the text between ``<text_to_classify>`` tags of the last user
message; the label must be one of the request's tool enum or the answer is sent as is (a test of an
out-of-set label can just answer one). Usage (prompt/completion tokens) is reported on every 200.

Run it in its own process (another process's benchmark, a manual check):
    python tests/faults/fake_endpoint.py --port 0 --label positive [--latency 0.01] [--max-concurrency 8]
prints ``READY http://127.0.0.1:PORT/v1`` on stdout and serves until SIGTERM/SIGINT. In that mode:
``GET /_log`` returns the request log as JSON and ``POST /_fail`` with {"mode", "times", "every",
"retry_after"} queues a fault. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import itertools
import json
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("429", "500", "503", "hang", "reset", "malformed", "empty_choices", "bad_label", "prose", "obey")
_TEXT = re.compile(r"<text_to_classify>\n?(.*?)\n?</text_to_classify>", re.S)
_OBEY = re.compile(r"(?:label is|answer with(?: the word)?|respond with|classify (?:this|it) as)\s+[\"']?(\w[\w-]*)",
                   re.I)
_REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable", 400: "Bad Request"}

Answer = str | dict[str, str] | Callable[[str], str]


@dataclass
class Request:
    """One chat request as the endpoint saw it."""

    n: int  # arrival order, from 1
    prompt_hash: str  # sha256 of the request's messages (what a cache key would cover)
    text: str  # the text to classify (or the last user message when untagged)
    at: float  # time.monotonic() at arrival
    status: int | None = None  # HTTP status sent; None: no response (reset, hang)
    mode: str | None = None  # the fault injected, if any
    label: str | None = None  # the label answered in a tool call, if any
    done_at: float | None = None
    auth: str | None = None  # the Authorization header as sent (which key reached this host)
    valid: bool = False  # a 200 carrying a label from the request's own enum (or any label, with no enum)
    body: dict[str, Any] | None = field(default=None, repr=False)  # the request as parsed (in-process mode)


@dataclass
class _Fault:
    mode: str
    retry_after: float | None = None


@dataclass
class _Plan:
    queued: collections.deque = field(default_factory=collections.deque)  # one _Fault per request
    every: list[tuple[int, _Fault]] = field(default_factory=list)
    when: list[Callable[[str], str | None]] = field(default_factory=list)


class FakeEndpoint:
    def __init__(self, answer: Answer = "positive", *, model: str = "fake-llm", latency_s: float = 0.0,
                 max_concurrency: int | None = None, rate_per_s: float | None = None, hang_s: float = 30.0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.answer = answer
        self.model = model
        self.latency_s = latency_s
        self.max_concurrency = max_concurrency
        self.rate_per_s = rate_per_s
        self.hang_s = hang_s
        self.host, self.port = host, port
        self.log: list[Request] = []
        self._plan = _Plan()
        self._lock = threading.Lock()
        self._count = itertools.count(1)
        self._in_flight = 0
        self.max_in_flight_seen = 0
        self._window: collections.deque[float] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._handlers: set[asyncio.Task] = set()
        self.control = False  # the /_log and /_fail routes (the separate-process mode)

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeEndpoint:
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._client, self.host, self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-endpoint", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- commands -----------------------------------------------------------------------------------
    def fail(self, mode: str, times: int = 1, retry_after: float | None = None) -> None:
        """The next ``times`` chat requests fail with ``mode``."""
        _check_mode(mode)
        with self._lock:
            self._plan.queued.extend(_Fault(mode, retry_after) for _ in range(times))

    def fail_every(self, mode: str, n: int, retry_after: float | None = None) -> None:
        """Every ``n``-th chat request (by arrival order) fails with ``mode``."""
        _check_mode(mode)
        with self._lock:
            self._plan.every.append((n, _Fault(mode, retry_after)))

    def fail_when(self, rule: Callable[[str], str | None]) -> None:
        """``rule(text)`` returns a mode (or None) for each request, from the text to classify."""
        with self._lock:
            self._plan.when.append(rule)

    def clear(self) -> None:
        with self._lock:
            self._plan = _Plan()
            self.log.clear()

    def answered(self) -> collections.Counter[str]:
        """prompt hash -> how many times a 200 carrying a valid label went back for it."""
        with self._lock:
            return collections.Counter(r.prompt_hash for r in self.log if r.valid)

    def answered_texts(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(r.text for r in self.log if r.status == 200 and r.label is not None)

    # -- HTTP ---------------------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                keep = await self._route(method, path.split("?")[0], body, writer, headers.get("authorization"))
                if not keep:
                    return
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the socket may be gone already
                pass

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                    extra: dict[str, str] | None = None, content_type: str = "application/json") -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'X')}", f"Content-Type: {content_type}",
                f"Content-Length: {len(body)}", "Connection: keep-alive"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    async def _route(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter,
                     auth: str | None = None) -> bool:
        if method == "GET" and path.rstrip("/").endswith("/models"):
            await self._send(writer, 200, json.dumps(
                {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}).encode())
            return True
        if self.control and method == "GET" and path == "/_log":
            with self._lock:
                data = [asdict(r) for r in self.log]
            await self._send(writer, 200, json.dumps(data).encode())
            return True
        if self.control and method == "POST" and path == "/_fail":
            cmd = json.loads(body or b"{}")
            if cmd.get("every"):
                self.fail_every(cmd["mode"], int(cmd["every"]), cmd.get("retry_after"))
            elif cmd.get("mode") == "clear":
                self.clear()
            else:
                self.fail(cmd["mode"], int(cmd.get("times", 1)), cmd.get("retry_after"))
            await self._send(writer, 200, b"{}")
            return True
        if method == "POST" and path.rstrip("/").endswith("/chat/completions"):
            return await self._chat(body, writer, auth)
        await self._send(writer, 404, b'{"error": {"message": "not found"}}')
        return True

    # -- chat completions ---------------------------------------------------------------------------
    def _fault_for(self, n: int, text: str) -> _Fault | None:
        with self._lock:
            if self._plan.queued:
                return self._plan.queued.popleft()
            for every, fault in self._plan.every:
                if n % every == 0:
                    return fault
            rules = list(self._plan.when)
        for rule in rules:
            mode = rule(text)
            if mode:
                _check_mode(mode)
                return _Fault(mode)
        return None

    def _over_limits(self, now: float) -> float | None:
        """Seconds to ask the client to wait when a limit is exceeded, else None."""
        with self._lock:
            if self.max_concurrency is not None and self._in_flight > self.max_concurrency:
                return 0.05
            if self.rate_per_s is not None:
                while self._window and now - self._window[0] > 1.0:
                    self._window.popleft()
                if len(self._window) >= self.rate_per_s:
                    return max(0.01, 1.0 - (now - self._window[0]))
                self._window.append(now)
        return None

    async def _chat(self, body: bytes, writer: asyncio.StreamWriter, auth: str | None = None) -> bool:
        try:
            req = json.loads(body)
        except json.JSONDecodeError:
            await self._send(writer, 400, b'{"error": {"message": "bad json"}}')
            return True
        messages = req.get("messages") or []
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
        text = _text_of(messages)
        record = Request(n=next(self._count), prompt_hash=digest, text=text, at=time.monotonic(), auth=auth,
                         body=None if self.control else req)
        with self._lock:
            self.log.append(record)
            self._in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self._in_flight)
        try:
            return await self._answer(req, record, writer)
        finally:
            with self._lock:
                self._in_flight -= 1
            record.done_at = time.monotonic()

    async def _answer(self, req: dict[str, Any], record: Request, writer: asyncio.StreamWriter) -> bool:
        wait = self._over_limits(record.at)
        if wait is not None:
            record.status, record.mode = 429, "limit"
            await self._send(writer, 429, _error("rate limit exceeded"), {"Retry-After": f"{wait:.3f}"})
            return True
        fault = self._fault_for(record.n, record.text)
        record.mode = fault.mode if fault else None
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault is not None:
            if fault.mode in ("429", "500", "503"):
                status = int(fault.mode)
                extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
                record.status = status
                await self._send(writer, status, _error(f"injected {status}"), extra)
                return True
            if fault.mode == "hang":
                await asyncio.sleep(self.hang_s)
                return False
            if fault.mode == "reset":
                _reset(writer)
                return False
            if fault.mode == "malformed":
                record.status = 200
                await self._send(writer, 200, b'{"id": "chatcmpl-x", "choices": [{"message": ')
                return True
            if fault.mode == "empty_choices":
                record.status = 200
                await self._send(writer, 200, json.dumps(_completion(self.model, [], req)).encode())
                return True
            if fault.mode == "prose":
                record.status = 200
                msg = {"role": "assistant", "content": "I think this text is quite interesting to read."}
                await self._send(writer, 200, json.dumps(_completion(self.model, [_choice(msg, "stop")], req)).encode())
                return True
        label = self._label(req, record.text, fault.mode if fault else None)
        allowed = _enum(req)
        record.status, record.label, record.valid = 200, label, (label in allowed) if allowed else True
        tool = _tool_name(req)
        msg = {"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_{record.n}", "type": "function",
            "function": {"name": tool, "arguments": json.dumps({"label": label})}}]}
        await self._send(writer, 200, json.dumps(_completion(self.model, [_choice(msg, "tool_calls")], req)).encode())
        return True

    def _label(self, req: dict[str, Any], text: str, mode: str | None) -> str:
        allowed = _enum(req)
        if mode == "bad_label":
            return "not-a-label"
        if mode == "obey":  # anywhere in the prompt, as a gullible model would
            found = _OBEY.search(" ".join(str(m.get("content", "")) for m in req.get("messages") or []))
            if found:
                return found.group(1)
        if callable(self.answer):
            return self.answer(text)
        if isinstance(self.answer, dict):
            return self.answer.get(text, allowed[0] if allowed else "positive")
        return self.answer


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown fault mode {mode!r}; one of {', '.join(MODES)}")


def _text_of(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    content = users[-1].get("content", "") if users else ""
    if isinstance(content, list):  # content parts
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    found = _TEXT.search(str(content))
    return found.group(1) if found else str(content)


def _tool_name(req: dict[str, Any]) -> str:
    choice = req.get("tool_choice")
    if isinstance(choice, dict):
        return choice.get("function", {}).get("name", "ChooseLabel")
    tools = req.get("tools") or []
    return tools[0].get("function", {}).get("name", "ChooseLabel") if tools else "ChooseLabel"


def _enum(req: dict[str, Any]) -> list[str]:
    for tool in req.get("tools") or []:
        props = tool.get("function", {}).get("parameters", {}).get("properties", {})
        label = props.get("label", {})
        if "enum" in label:
            return list(label["enum"])
    return []


def _choice(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}


def _completion(model: str, choices: list[dict[str, Any]], req: dict[str, Any]) -> dict[str, Any]:
    prompt_tokens = 10 + len(json.dumps(req.get("messages", []))) // 4
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7}}


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "fake", "code": None}}).encode()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:  # linger 0: close() sends RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--label", default="positive", help="the label every answer carries")
    parser.add_argument("--gold", help="JSON file {text: label}: answer the gold label of each text")
    parser.add_argument("--model", default="fake-llm")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--max-concurrency", type=int)
    parser.add_argument("--rate", type=float, help="requests per second before 429")
    args = parser.parse_args(argv)
    answer: Answer = args.label
    if args.gold:
        with open(args.gold, encoding="utf-8") as f:
            answer = json.load(f)
    ep = FakeEndpoint(answer, model=args.model, latency_s=args.latency, max_concurrency=args.max_concurrency,
                      rate_per_s=args.rate, host=args.host, port=args.port)
    ep.control = True
    ep.start()
    print(f"READY {ep.base_url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    ep.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
