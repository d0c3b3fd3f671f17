"""The one event loop every async LLM call runs on.

ChatOpenAI's async httpx client is bound to the first loop that used it: a fresh asyncio.run() per
batch fails on the second batch ("Event ... is bound to a different event loop", seen with
langchain-openai 1.7.4). One long-lived loop in a daemon thread serves every verifier; the thread
also makes blocking calls possible from code that is itself inside a running loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="autoannotator-llm", daemon=True).start()
        return _loop


def run_on_llm_loop(coro: Coroutine[Any, Any, T], *, on_interrupt: Callable[[], None] | None = None,
                    grace_s: float = 0.0) -> T:
    """Run ``coro`` on the shared LLM loop and wait for it. Any async use of a ChatOpenAI must go
    through here: once its async client has run on this loop, another loop cannot reuse it.

    Interrupted (Ctrl-C, SIGTERM raised as KeyboardInterrupt in this thread): ``on_interrupt()`` tells
    the coroutine to start nothing new, the requests in flight get ``grace_s`` to finish (their answers
    are stored: not paid again on resume), then whatever is left is cancelled and the interrupt re-raised."""
    loop = _background_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("run_on_llm_loop() called on the LLM loop itself; await the coroutine instead")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:
        if on_interrupt is not None and grace_s > 0 and not future.done():
            on_interrupt()
            try:
                future.result(timeout=grace_s)
            except BaseException:  # noqa: BLE001 - a second Ctrl-C, the grace running out, a failure
                pass
        future.cancel()  # stop what is still in flight
        raise
