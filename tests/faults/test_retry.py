"""What langchain-openai really raises for each fault of a real HTTP endpoint, and how it is classified."""

from __future__ import annotations

import email.utils
import time

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from autoannotator.llm.retry import is_transient, retry_after_seconds


class ChooseLabel(BaseModel):
    """Record the one label."""

    label: str


def _structured(endpoint, timeout_s: float = 1.0):
    chat = ChatOpenAI(model=endpoint.model, base_url=endpoint.base_url, api_key="none", timeout=timeout_s,
                      max_retries=0, use_responses_api=False, temperature=0)
    return chat.with_structured_output(ChooseLabel, method="function_calling", include_raw=True)


def _error_of(endpoint, mode: str, **kw) -> BaseException:
    endpoint.fail(mode, **kw)
    try:
        out = _structured(endpoint).invoke([HumanMessage("<text_to_classify>\nhi\n</text_to_classify>")])
    except Exception as exc:  # noqa: BLE001 - the point is to see what comes out
        return exc
    raise AssertionError(f"{mode}: no exception, got {out!r}")


@pytest.mark.parametrize("mode,kind", [
    ("429", openai.RateLimitError), ("500", openai.InternalServerError), ("503", openai.InternalServerError),
    ("reset", openai.APIConnectionError), ("hang", openai.APITimeoutError),
])
def test_status_and_network_faults_are_transient(endpoint, mode, kind):
    exc = _error_of(endpoint, mode)
    assert isinstance(exc, kind), repr(exc)
    assert is_transient(exc)


def test_malformed_body_is_transient(endpoint):
    exc = _error_of(endpoint, "malformed")
    assert is_transient(exc), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"


def test_empty_choices_is_transient(endpoint):
    endpoint.fail("empty_choices")
    try:
        out = _structured(endpoint).invoke([HumanMessage("x")])
    except Exception as exc:  # noqa: BLE001
        assert is_transient(exc), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    else:  # some versions return an answer without a message; the verifier must treat it as no answer
        assert out.get("parsed") is None


def test_retry_after_is_read_from_what_the_client_attaches(endpoint):
    exc = _error_of(endpoint, "429", retry_after=2.5)
    assert retry_after_seconds(exc) == 2.5
    assert retry_after_seconds(exc, cap_s=1.0) == 1.0
    assert retry_after_seconds(_error_of(endpoint, "429")) is None
    assert retry_after_seconds(_error_of(endpoint, "503", retry_after=3)) == 3


def test_bad_request_is_not_transient():
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    exc = openai.BadRequestError("bad", response=httpx.Response(400, request=request), body=None)
    assert not is_transient(exc)
    assert not is_transient(ValueError("ours"))
    assert not is_transient(IndexError("a bug of ours, not the endpoint's"))


def _status_error(headers: dict[str, str]) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return openai.RateLimitError("r", response=httpx.Response(429, request=request, headers=headers), body=None)


def test_retry_after_forms():
    assert retry_after_seconds(_status_error({"retry-after-ms": "1500"})) == 1.5
    now = time.time()
    date = email.utils.formatdate(now + 10, usegmt=True)
    assert 8 <= retry_after_seconds(_status_error({"Retry-After": date}), now=now) <= 10
    assert retry_after_seconds(_status_error({"Retry-After": "soon"})) is None
    assert retry_after_seconds(_status_error({"Retry-After": "-3"})) == 0.0
    assert retry_after_seconds(_status_error({"Retry-After": "99999"}), cap_s=30) == 30
    assert retry_after_seconds(ValueError("no response")) is None
