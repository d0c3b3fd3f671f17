"""Endpoint selection, the remote-LLM guard and the reachability check; nothing here starts a model."""

from __future__ import annotations

import socket

import pytest

from autoannotator.llm import embedded
from autoannotator.llm.factory import OPENAI_BASE_URL, LLMHandle, check_reachable, llm_session, resolve_endpoint
from autoannotator.config import Settings
from autoannotator.errors import LLMUnavailable, UserError


def test_nothing_configured_means_embedded():
    s = Settings()
    assert s.uses_embedded_llm and resolve_endpoint(s).embedded


def test_base_url_wins():
    s = Settings(llm_base_url="http://127.0.0.1:9999/v1/", llm_model="m", llm_api_key="k")
    ep = resolve_endpoint(s)
    assert (ep.base_url, ep.model, ep.api_key, ep.embedded) == ("http://127.0.0.1:9999/v1", "m", "k", False)


def test_base_url_needs_a_model():
    with pytest.raises(UserError, match="llm_model"):
        resolve_endpoint(Settings(llm_base_url="http://127.0.0.1:9999/v1"))


def test_model_and_key_mean_openai():
    ep = resolve_endpoint(Settings(llm_model="gpt-4o-mini", llm_api_key="sk-test"))
    assert ep.base_url == OPENAI_BASE_URL and not ep.embedded


def test_local_session_builds_the_chat_model_without_starting_anything():
    s = Settings(llm_base_url="http://localhost:9/v1", llm_model="local", llm_timeout_s=7)
    with llm_session(s) as handle:
        assert not handle.embedded and handle.server is None
        assert handle.model_id == "local@http://localhost:9/v1"
        chat = handle.chat
        assert chat.model_name == "local" and chat.temperature == 0 and chat.max_retries == 0
        assert chat.request_timeout == 7 and chat.use_responses_api is False
        assert chat.openai_api_key.get_secret_value() == "none"


def test_remote_endpoints_are_refused_under_the_test_guard():
    with pytest.raises(LLMUnavailable, match="non-loopback"):
        with llm_session(Settings(llm_model="gpt-4o-mini", llm_api_key="sk-test")):
            pass
    with pytest.raises(LLMUnavailable, match="non-loopback"):
        with llm_session(Settings(llm_base_url="http://10.0.0.5:8000/v1", llm_model="m")):
            pass


def test_guard_off_allows_openai(monkeypatch):
    monkeypatch.delenv("AUTOANNOTATOR_BLOCK_REMOTE_LLM")
    with llm_session(Settings(llm_model="gpt-4o-mini", llm_api_key="sk-test")) as handle:
        assert handle.base_url == OPENAI_BASE_URL  # built, never called


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_reachable_closed_port_is_one_line():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    with llm_session(Settings(llm_base_url=url, llm_model="m")) as handle:
        with pytest.raises(LLMUnavailable) as info:
            check_reachable(handle, timeout_s=2)
    msg = str(info.value)
    assert msg.startswith(f"cannot reach the LLM endpoint at {url}: ") and "\n" not in msg


def test_missing_embedded_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        embedded.find_embedded_model(Settings(embedded_model_path=tmp_path / "nope.gguf"))


def test_handle_hides_the_key():
    handle = LLMHandle(chat=None, model_id="m", base_url="u", embedded=False,  # type: ignore[arg-type]
                       api_key="sk-secret")
    assert "sk-secret" not in repr(handle)


def test_the_verifier_gets_the_direct_client_unless_langsmith_traces(monkeypatch):
    from autoannotator.llm.choose import ChatModelChooser, EndpointChooser
    from autoannotator.llm.factory import TRACING_ENV

    for name in TRACING_ENV:
        monkeypatch.delenv(name, raising=False)
    s = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="local", llm_timeout_s=7)
    with llm_session(s) as handle:
        direct = handle.chooser(["a", "b"], max_connections=8)
        assert isinstance(direct, EndpointChooser) and direct.url == "http://127.0.0.1:9/v1/chat/completions"
        assert direct.payload([])["model"] == "local"
        monkeypatch.setenv("LANGSMITH_TRACING", "true")
        assert isinstance(handle.chooser(["a", "b"], max_connections=8), ChatModelChooser)
