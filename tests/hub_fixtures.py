"""Shared by the Hub tool tests: isolated caches and the recorded Hub served on loopback."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "hub"
_spec = importlib.util.spec_from_file_location("recorded_hub", FIXTURES / "recorded_hub.py")
recorded_hub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recorded_hub)


def go_online(monkeypatch, url: str) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once at import; conftest set it
    monkeypatch.setenv("HF_ENDPOINT", url)


@pytest.fixture()
def caches(tmp_path, monkeypatch) -> SimpleNamespace:
    """Empty HF cache and metadata cache under tmp_path; no token."""
    hf = tmp_path / "hf" / "hub"
    hf.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return SimpleNamespace(hf=hf, meta=tmp_path / "xdg" / "autoannotator" / "hub-metadata")


@pytest.fixture()
def hub(caches, monkeypatch):
    with recorded_hub.RecordedHub() as server:
        go_online(monkeypatch, server.url)
        yield server
