"""The API key rule: OPENAI_API_KEY goes only to OpenAI; another endpoint's key must be named for it."""

from __future__ import annotations

import pytest

from autoannotator.config import Settings
from autoannotator.llm import keys
from autoannotator.llm.keys import choose_api_key, is_openai_host, warn_once


@pytest.mark.parametrize("url,ok", [
    (None, True), ("https://api.openai.com/v1", True), ("https://API.OpenAI.com/v1/", True),
    ("http://api.openai.com/v1", False),  # plain HTTP: anyone on the path reads the key
    ("https://api.openai.com.evil.example/v1", False), ("https://evil.example/api.openai.com/v1", False),
    ("http://127.0.0.1:8000/v1", False), ("https://openrouter.ai/api/v1", False),
])
def test_openai_host(url, ok):
    assert is_openai_host(url) is ok


def test_openai_key_is_withheld_from_another_host_with_a_warning():
    choice = choose_api_key("http://127.0.0.1:9/v1", llm_api_key=None, openai_api_key="sk-openai")
    assert choice.key is None and choice.source == "none"
    assert "127.0.0.1" in choice.warning and "AUTOANNOTATOR_LLM_API_KEY" in choice.warning
    assert "sk-openai" not in choice.warning


def test_openai_key_goes_to_openai():
    assert choose_api_key(None, llm_api_key=None, openai_api_key="sk-o").key == "sk-o"
    assert choose_api_key("https://api.openai.com/v1", llm_api_key=None, openai_api_key="sk-o").key == "sk-o"


def test_named_key_goes_anywhere_and_wins():
    choice = choose_api_key("http://10.1.2.3/v1", llm_api_key="named", openai_api_key="sk-o")
    assert (choice.key, choice.source, choice.warning) == ("named", "llm_api_key", None)
    assert choose_api_key(None, llm_api_key="named", openai_api_key="sk-o").key == "named"


def test_no_key_no_warning():
    assert choose_api_key("http://127.0.0.1/v1", llm_api_key=None, openai_api_key=None) == keys.KeyChoice(None, "none")


def test_warning_once_per_endpoint(monkeypatch):
    monkeypatch.setattr(keys, "_warned", set())
    choice = choose_api_key("http://h1/v1", llm_api_key=None, openai_api_key="sk")
    assert warn_once(choice, "http://h1/v1") is not None
    assert warn_once(choice, "http://h1/v1") is None
    other = choose_api_key("http://h2/v1", llm_api_key=None, openai_api_key="sk")
    assert warn_once(other, "http://h2/v1") is not None


def test_settings_keep_the_two_keys_apart(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    s = Settings()
    assert s.llm_api_key is None and s.openai_api_key.get_secret_value() == "sk-openai"
    monkeypatch.setenv("AUTOANNOTATOR_LLM_API_KEY", "named")
    s = Settings()
    assert s.llm_api_key.get_secret_value() == "named" and s.openai_api_key.get_secret_value() == "sk-openai"


def test_settings_model_plus_openai_key_is_not_embedded(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert not Settings(llm_model="gpt-4o-mini").uses_embedded_llm
    monkeypatch.delenv("OPENAI_API_KEY")
    assert Settings(llm_model="gpt-4o-mini").uses_embedded_llm


def test_config_file_names_the_key(tmp_path, monkeypatch):
    from autoannotator.config import load_settings

    cfg = tmp_path / "c.toml"
    cfg.write_text('llm_api_key = "from-config"\n')
    s = load_settings(config_file=cfg)
    assert s.llm_api_key.get_secret_value() == "from-config" and s.openai_api_key is None


def test_factory_applies_the_rule(monkeypatch):
    from autoannotator.llm.factory import OPENAI_BASE_URL, resolve_endpoint

    monkeypatch.setattr(keys, "_warned", set())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    ep = resolve_endpoint(Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="m"))
    assert ep.api_key is None and "OPENAI_API_KEY is not sent to 127.0.0.1" in ep.warning
    assert resolve_endpoint(Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="m")).warning is None  # once
    ep = resolve_endpoint(Settings(llm_model="gpt-4o-mini"))
    assert (ep.base_url, ep.api_key) == (OPENAI_BASE_URL, "sk-openai")
    monkeypatch.setenv("AUTOANNOTATOR_LLM_API_KEY", "named")
    assert resolve_endpoint(Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="m")).api_key == "named"
