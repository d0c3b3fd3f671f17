"""A minimal fast fake OpenAI-compatible endpoint for benchmarks/scaling.py (used when the fault suite's
tests/faults/fake_endpoint.py is not there): asyncio, keep-alive, no disk writes, a set latency and a cap on
concurrent requests (429 beyond it). Every answer is a tool call with the first label of the request's enum.
``GET /_log``: how many times each prompt (sha256 of its last user message) was answered.

    python benchmarks/_fake_llm.py --latency 0.2 --max-concurrency 50    # prints READY <base_url>
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import signal
import sys


class _Server:
    def __init__(self, latency_s: float, max_concurrency: int):
        self.latency_s, self.max_concurrency = latency_s, max_concurrency
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests it held at once
        self.answered = 0
        self.log: collections.Counter[str] = collections.Counter()  # sha256 of the last user message -> answers

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = next((int(v) for k, _, v in (h.partition(":") for h in lines[1:])
                               if k.strip().lower() == "content-length"), 0)
                body = await reader.readexactly(length) if length else b""
                status, payload = await self.route(method, path, body)
                writer.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % (status, len(payload)) + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError, ValueError):
            pass  # the client went away, or the server is stopping
        finally:
            writer.close()

    async def route(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if method == "GET" and path.endswith("/models"):
            return 200, json.dumps({"object": "list", "data": [{"id": "fake-llm", "object": "model"}]}).encode()
        if method == "GET" and path == "/_stats":
            return 200, json.dumps({"answered": self.answered, "in_flight": self.in_flight,
                                    "max_in_flight": self.max_in_flight}).encode()
        if method == "GET" and path == "/_log":
            return 200, json.dumps(self.log).encode()
        if not path.endswith("/chat/completions"):
            return 404, b'{"error": {"message": "not found"}}'
        if self.in_flight >= self.max_concurrency:
            return 429, b'{"error": {"message": "too many concurrent requests"}}'
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s)
        finally:
            self.in_flight -= 1
        req = json.loads(body or b"{}")
        tools = req.get("tools") or []
        fn = tools[0]["function"] if tools else {"name": "label", "parameters": {}}
        props = (fn.get("parameters") or {}).get("properties") or {}
        enum = next((p.get("enum") for p in props.values() if isinstance(p, dict) and p.get("enum")), ["positive"])
        args = json.dumps({k: enum[0] for k in props} or {"label": enum[0]})
        message = {"role": "assistant", "content": None,
                   "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": fn["name"],
                                                                                     "arguments": args}}]}
        self.answered += 1
        users = [m.get("content") for m in req.get("messages", []) if m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            self.log[hashlib.sha256(users[-1].encode("utf-8")).hexdigest()] += 1
        return 200, json.dumps({"id": "x", "object": "chat.completion", "model": req.get("model", "fake-llm"),
                                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                                "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}}).encode()


async def _main(latency: float, max_concurrency: int, port: int) -> None:
    srv = _Server(latency, max_concurrency)
    server = await asyncio.start_server(srv.client, "127.0.0.1", port, backlog=1024)
    print(f"READY http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--max-concurrency", type=int, default=50)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    asyncio.run(_main(a.latency, a.max_concurrency, a.port))
    sys.exit(0)
