"""Request/response over a UNIX socket between autoannotator and a sandboxed worker.

Standard library only: the sandbox copies this file next to the generated code, which does
``import worker_protocol`` and calls ``serve(handler)``. A UNIX socket is a file in the shared
work dir, so it works where the sandbox has no network at all (``--network none``, bubblewrap's
unshared network namespace).

Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.
Responses: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "Type: message"}``.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

SOCKET_ENV = "AUTOANNOTATOR_WORKER_SOCKET"
# The host reads what untrusted code sends: bound what one message may make it allocate.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_HEADER = struct.Struct(">I")


class RemoteError(Exception):
    """The worker's handler raised; the worker itself is still serving."""


def send_message(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return bytes(buf)


def recv_message(sock: socket.socket) -> Any:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES}")
    return json.loads(_recv_exact(sock, size))


def _answer(handler: Callable[[dict], dict], request: Any) -> dict:
    try:
        if not isinstance(request, dict):
            raise TypeError("request must be a JSON object")
        result = handler(request)
        json.dumps(result, allow_nan=False)  # fail here, as an error reply, not mid-send
        return {"ok": True, "result": result}
    except Exception as exc:  # the handler's bug is reported to the caller; the worker keeps serving
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}


def serve(handler: Callable[[dict], dict], path: str | None = None) -> None:
    """Answer the one host connection's requests until the host hangs up."""
    path = path or os.environ[SOCKET_ENV]
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    # The host holds one connection for the worker's whole life. When it closes, the orchestrator has
    # finished or died (kill -9 included): stop, so no worker or container outlives its run.
    conn, _ = server.accept()
    with conn:
        while True:
            try:
                request = recv_message(conn)
            except (EOFError, ConnectionError):
                return
            send_message(conn, _answer(handler, request))


class Client:
    """The host side: one connection, synchronous calls."""

    def __init__(self, path: str, timeout_s: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def call(self, payload: dict, timeout_s: float | None = None) -> dict:
        """Send one request; raise RemoteError if the handler failed, TimeoutError if no answer in time."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.sock.settimeout(timeout_s)
        send_message(self.sock, payload)
        if deadline is not None:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        reply = recv_message(self.sock)
        if not isinstance(reply, dict) or "ok" not in reply:
            raise ValueError("malformed reply from worker")
        if not reply["ok"]:
            raise RemoteError(str(reply.get("error", "unknown error")))
        result = reply.get("result")
        if not isinstance(result, dict):
            raise ValueError("worker result is not a JSON object")
        return result

    def close(self) -> None:
        self.sock.close()


def connect(path: str, timeout_s: float = 10.0) -> Client:
    return Client(path, timeout_s)
