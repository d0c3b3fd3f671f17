"""Which LLM call failures are worth another attempt, and how long the server asked us to wait.

Pure: no I/O, no sleeping. What counts as transient was found by driving langchain-openai 1.7.4's
``ChatOpenAI`` (``max_retries=0``, openai 3.57) against the fault-injecting endpoint in tests/faults
(tests/faults/test_retry.py pins each case):

* connection reset, read timeout -> ``openai.APIConnectionError`` / ``APITimeoutError``;
* 429 -> langchain's ``OpenAIRateLimitError`` (an ``openai.RateLimitError``); 500/503 ->
  ``openai.InternalServerError`` (an ``APIStatusError``); 408/409 are retried too, as openai's own
  client does;
* a 200 whose body is not JSON -> a bare ``json.JSONDecodeError`` from inside the openai client;
* a 200 with ``choices: []`` -> a bare ``IndexError`` raised in ``langchain_core``'s chat model
  (``generations[0]``): recognised by the module of the frame that raised it, so an IndexError of
  our own is still a bug, not a retry.

Retry-After: the openai client attaches its response as ``exc.response``, today an
``httpx2.Response`` (openai vendors its own httpx), so an ``isinstance(..., httpx.Response)`` check
never matches: headers are read by duck typing.

The verifier's own client (``llm/choose.py: EndpointChooser``) raises the ``Endpoint*`` errors below
instead: a status it would retry (``EndpointStatusError``, its headers kept for Retry-After), a
connection that failed (``EndpointConnectionError``) or timed out (``EndpointTimeout``, maybe billed), a
200 that is no completion (``UnusableAnswer``) or has no choice (``EmptyChoices``);
tests/faults/test_endpoint_chooser.py pins each against the same endpoint.

A 4xx other than those (bad request, auth) is not transient: retrying cannot fix it.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import httpx
import openai

RETRY_STATUS = frozenset({408, 409, 429})
DEFAULT_CAP_S = 60.0


class EmptyChoices(ValueError):
    """The endpoint answered 200 with no usable choice: raise it where that is detected, to retry."""


class EndpointError(Exception):
    """A request the endpoint did not answer with a usable completion."""


class EndpointStatusError(EndpointError):
    def __init__(self, status_code: int, message: str, headers: Any) -> None:
        super().__init__(f"HTTP {status_code}: {message}" if message else f"HTTP {status_code}")
        self.status_code = status_code
        self.headers = headers  # read by retry_after_seconds


class EndpointConnectionError(EndpointError):
    """Connection refused or reset, DNS failure: never answered, so never billed."""


class EndpointTimeout(EndpointConnectionError):
    """Sent and not answered in time: the server may have processed (and billed) it."""


class UnusableAnswer(EndpointError):
    """A 200 whose body is not a chat completion (not JSON, no message): answered, so maybe billed."""


def _is_empty_choices(exc: BaseException) -> bool:
    if isinstance(exc, EmptyChoices):
        return True
    # langchain-openai builds no generation from an empty list; the first consumer then indexes it.
    if isinstance(exc, IndexError):
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
        return module.startswith(("langchain_core", "langchain_openai"))
    return False


def is_transient(exc: BaseException) -> bool:
    """True when the same request may well succeed if sent again (after a pause)."""
    if isinstance(exc, EndpointStatusError):
        return exc.status_code >= 500 or exc.status_code in RETRY_STATUS
    if isinstance(exc, (EndpointConnectionError, UnusableAnswer)):  # a timeout is a connection error too
        return True
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in RETRY_STATUS
    if isinstance(exc, openai.APIResponseValidationError):  # a 200 body that is not a completion
        return True
    if isinstance(exc, json.JSONDecodeError):
        return True
    if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError,
                        TimeoutError, ConnectionError)):
        return True
    return _is_empty_choices(exc)


def _headers(exc: BaseException) -> Any:
    """The response headers an openai error carries: ``exc.response.headers`` on APIStatusError
    (openai>=1), else a ``headers`` attribute (some wrappers), else None."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        headers = getattr(exc, "headers", None)
    return headers


def _parse_seconds(value: str | None, now: float | None = None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:  # HTTP-date form
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return 0.0 if seconds == seconds else None
    return seconds


def retry_after_seconds(exc: BaseException, cap_s: float = DEFAULT_CAP_S, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, else ``Retry-After`` in seconds or as an
    HTTP date), capped at ``cap_s``; None when it said nothing usable."""
    headers = _headers(exc)
    if headers is None:
        return None
    get = getattr(headers, "get", None)
    if get is None:
        return None
    ms = _parse_seconds(get("retry-after-ms"), now)
    seconds = ms / 1000.0 if ms is not None else _parse_seconds(get("retry-after"), now)
    return None if seconds is None else min(seconds, cap_s)
