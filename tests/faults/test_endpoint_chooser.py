"""The verifier's direct chat-completions client against a real HTTP endpoint on loopback: the request it
sends is LangChain's, and every fault comes out classified as the retry rule and the ledger expect."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from autoannotator.errors import LLMUnavailable
from autoannotator.llm.choose import EndpointChooser, label_schema, parse_completion
from autoannotator.llm.retry import (EmptyChoices, EndpointConnectionError, EndpointStatusError, EndpointTimeout,
                                     UnusableAnswer, is_transient, retry_after_seconds)
from autoannotator.task import LabelDef, TaskSpec
from autoannotator.verify.llm import LLMVerifier

LABELS = ["positive", "negative"]
MESSAGES = [SystemMessage("Label the text."), HumanMessage("<text_to_classify>\nfine\n</text_to_classify>")]


def _chooser(endpoint, timeout_s: float = 2.0, **kw) -> EndpointChooser:
    return EndpointChooser(endpoint.base_url, endpoint.model, "sk-test", LABELS, timeout_s=timeout_s,
                           max_connections=4, trust_env=False, **kw)


def _choose(chooser: EndpointChooser, messages=MESSAGES):
    async def go():
        try:
            return await chooser.choose(messages)
        finally:
            await chooser.aclose()
    return asyncio.run(go())


def _error(endpoint, mode: str, **kw) -> BaseException:
    endpoint.fail(mode, **kw)
    try:
        out = _choose(_chooser(endpoint, timeout_s=1.0))
    except Exception as exc:  # noqa: BLE001 - the point is to see what comes out
        return exc
    raise AssertionError(f"{mode}: no exception, got {out!r}")


def test_the_request_is_the_one_langchain_sends(endpoint):
    chat = ChatOpenAI(model=endpoint.model, base_url=endpoint.base_url, api_key="sk-test", max_retries=0,
                      use_responses_api=False, temperature=0, max_tokens=512)
    chat.with_structured_output(label_schema(LABELS), method="function_calling", include_raw=True).invoke(MESSAGES)
    answer = _choose(_chooser(endpoint, max_tokens=512))
    theirs, ours = (r.body for r in endpoint.log)
    # One deliberate difference: the cap goes as max_tokens, the field llama.cpp's server reads (it
    # ignores LangChain's max_completion_tokens, so the embedded model's cap never applied).
    assert theirs.pop("max_completion_tokens") == ours.pop("max_tokens") == 512
    assert ours == theirs
    assert endpoint.log[1].auth == "Bearer sk-test"
    assert answer.tool_labels == ("positive",) and answer.tokens_in and answer.tokens_out is not None


@pytest.mark.parametrize("mode,kind", [("429", EndpointStatusError), ("500", EndpointStatusError),
                                       ("503", EndpointStatusError), ("reset", EndpointConnectionError),
                                       ("hang", EndpointTimeout), ("malformed", UnusableAnswer),
                                       ("empty_choices", EmptyChoices)])
def test_each_fault_is_transient_and_typed(endpoint, mode, kind):
    exc = _error(endpoint, mode)
    assert isinstance(exc, kind), repr(exc)
    assert is_transient(exc)


def test_retry_after_is_read(endpoint):
    assert retry_after_seconds(_error(endpoint, "429", retry_after=2.5)) == 2.5
    assert retry_after_seconds(_error(endpoint, "503", retry_after=3), cap_s=1.0) == 1.0
    assert retry_after_seconds(_error(endpoint, "429")) is None


def test_prose_and_bad_labels_are_answers_without_a_valid_label(endpoint):
    endpoint.fail("prose")
    prose = _choose(_chooser(endpoint))
    assert prose.tool_labels == () and "interesting" in prose.content
    endpoint.fail("bad_label")
    assert _choose(_chooser(endpoint)).tool_labels == ("not-a-label",)


def test_a_refusal_no_retry_can_fix_is_one_line():
    # A real listener that answers 401 to everything: the key is wrong.
    import http.server
    import threading

    class Deny(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            body = b'{"error": {"message": "Incorrect API key provided"}}'
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        chooser = EndpointChooser(f"http://127.0.0.1:{server.server_port}/v1", "m", "bad", LABELS, timeout_s=2,
                                  max_connections=1, trust_env=False)
        with pytest.raises(LLMUnavailable) as info:
            _choose(chooser)
    finally:
        server.shutdown()
    message = str(info.value)
    assert "HTTP 401" in message and "Incorrect API key" in message and "check the API key" in message
    assert "\n" not in message and not is_transient(info.value)


def test_nothing_listening_is_a_connection_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chooser = EndpointChooser(f"http://127.0.0.1:{port}/v1", "m", None, LABELS, timeout_s=2, max_connections=1,
                              trust_env=False)
    with pytest.raises(EndpointConnectionError) as info:
        _choose(chooser)
    assert not isinstance(info.value, EndpointTimeout) and is_transient(info.value)


@pytest.mark.parametrize("body", [b'{"choices": [{"message": {"content": null, "tool_calls": [{"function": '
                                  b'{"name": "ChooseLabel", "arguments": "{not json"}}]}}]}',
                                  b'{"choices": [{"message": {"content": "negative"}}], "usage": {}}'])
def test_malformed_calls_and_missing_usage_read_as_no_label_and_no_usage(body):
    answer = parse_completion(body)
    assert answer.tool_labels == () and answer.tokens_in is None and answer.tokens_out is None
    with pytest.raises(UnusableAnswer):
        parse_completion(b'[1, 2]')
    with pytest.raises(UnusableAnswer):
        parse_completion(b'{"choices": ["x"]}')


def test_the_verifier_retries_and_counts_faults_through_the_direct_client(endpoint, tmp_path):
    """Through the real verifier: a timeout is counted apart, a malformed 200 is an extra paid request,
    a 503 costs nothing, and the label that finally comes is cached once."""
    task = TaskSpec(instruction="Label the sentiment.", labels=[LabelDef(name=n) for n in LABELS])
    endpoint.fail("hang")
    endpoint.fail("malformed")
    endpoint.fail("503")
    verifier = LLMVerifier(_chooser(endpoint, timeout_s=1.0), "fake", task, tmp_path / "a.sqlite", "r1",
                           max_retries=3, backoff_base_s=0.01)
    out = verifier.verify([(0, "fine")])
    assert out[0].label == "positive" and not out[0].tokens_estimated
    usage = verifier.ledger()
    assert (usage.calls, usage.extra_calls, usage.timed_out) == (2, 1, 1), usage  # calls include the extra one
    assert [r.mode for r in endpoint.log] == ["hang", "malformed", "503", None]
