"""Test-wide guards: no test reaches a remote model or any non-loopback address by accident."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["AUTOANNOTATOR_BLOCK_REMOTE_LLM"] = "1"  # the LLM factory refuses non-loopback endpoints
for _var in ("OPENAI_API_KEY", "AUTOANNOTATOR_LLM_API_KEY", "AUTOANNOTATOR_LLM_BASE_URL", "AUTOANNOTATOR_LLM_MODEL",
             "AUTOANNOTATOR_CONFIG"):
    os.environ.pop(_var, None)

_real_connect = socket.socket.connect


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and self.family in (socket.AF_INET, socket.AF_INET6):
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = host == "localhost"
        if not ok:
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {host!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_remote_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)
    yield


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio server on loopback for the whole session (its first start takes minutes)."""
    from labelstudio_server import serve

    yield from serve(tmp_path_factory.mktemp("label-studio"))
