"""THE one LLM factory: every chat model in the program comes from ``llm_session``.

Endpoint choice, in order: ``llm_base_url`` (any OpenAI-compatible server); else ``llm_model`` with
an API key (OpenAI itself); else the embedded SmolLM2 server, started for the session and stopped
after it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from langchain_openai import ChatOpenAI

from autoannotator.errors import LLMUnavailable, UserError
from autoannotator.llm.choose import ChatModelChooser, EndpointChooser, LabelChooser
from autoannotator.llm.embedded import EmbeddedServer
from autoannotator.llm.keys import choose_api_key, warn_once

OPENAI_BASE_URL = "https://api.openai.com/v1"
BLOCK_REMOTE_ENV = "AUTOANNOTATOR_BLOCK_REMOTE_LLM"
# The embedded 135M model rambles when not grammar-constrained; cap an answer's length.
EMBEDDED_MAX_TOKENS = 512


@dataclass(frozen=True)
class Endpoint:
    base_url: str | None  # None: the embedded server, whose URL is known only once it runs
    model: str | None
    api_key: str | None = field(default=None, repr=False)
    warning: str | None = None  # e.g. OPENAI_API_KEY withheld from this host

    @property
    def embedded(self) -> bool:
        return self.base_url is None


@dataclass(frozen=True)
class LLMHandle:
    chat: ChatOpenAI  # the planner's and the chat session's model
    model_id: str  # stable name of model + endpoint, for cache keys and reports
    base_url: str
    embedded: bool
    api_key: str | None = field(default=None, repr=False)
    server: EmbeddedServer | None = field(default=None, repr=False)
    warning: str | None = None
    timeout_s: float = 60.0

    @property
    def model(self) -> str:
        return str(self.chat.model_name)

    def chooser(self, labels: list[str], max_connections: int) -> LabelChooser:
        """The verifier's client for this endpoint (see ``verifier_chooser``)."""
        return verifier_chooser(self.base_url, self.model, self.api_key, labels, timeout_s=self.timeout_s,
                                max_connections=max_connections,
                                max_tokens=EMBEDDED_MAX_TOKENS if self.embedded else None)


TRACING_ENV = ("LANGSMITH_TRACING", "LANGSMITH_TRACING_V2", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING")


def langchain_tracing() -> bool:
    """Whether LangSmith tracing is switched on by its environment variables (read at each call)."""
    return any(os.environ.get(name, "").strip().lower() == "true" for name in TRACING_ENV)


def verifier_chooser(base_url: str, model: str, api_key: str | None, labels: list[str], *, timeout_s: float,
                     max_connections: int, max_tokens: int | None = None) -> LabelChooser:
    """A verifier's label client for an OpenAI-compatible endpoint (here, or on a Ray worker): the direct
    one, or, while LangSmith tracing is on, the same request through LangChain so that the tracer sees it."""
    guard_remote(base_url)
    if langchain_tracing():
        extra = {"max_tokens": max_tokens} if max_tokens is not None else {}
        return ChatModelChooser(_chat(base_url, model, api_key, timeout_s, **extra), labels)
    # A proxy from the environment must not intercept a loopback server.
    return EndpointChooser(base_url, model, api_key, labels, timeout_s=timeout_s, max_connections=max_connections,
                           max_tokens=max_tokens, trust_env=not _is_loopback(urlsplit(base_url).hostname or ""))


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value else None


def resolve_endpoint(settings: Any) -> Endpoint:
    """Which endpoint the settings select, with the key it may be sent (``llm/keys.py``: OPENAI_API_KEY
    only ever goes to api.openai.com); no I/O. A withheld key is warned about once per process
    (``Endpoint.warning``, then ``LLMHandle.warning``: the runner shows it)."""
    named, openai_key = _secret(settings.llm_api_key), _secret(getattr(settings, "openai_api_key", None))
    if settings.llm_base_url:
        if not settings.llm_model:
            raise UserError(f"llm_base_url is set ({settings.llm_base_url}) but llm_model is not: "
                            "set AUTOANNOTATOR_LLM_MODEL to the model name that endpoint serves")
        base_url = settings.llm_base_url.rstrip("/")
        choice = choose_api_key(base_url, llm_api_key=named, openai_api_key=openai_key)
        return Endpoint(base_url, settings.llm_model, choice.key, warning=warn_once(choice, base_url))
    key = named or openai_key
    if settings.llm_model and key:
        return Endpoint(OPENAI_BASE_URL, settings.llm_model, key)
    return Endpoint(None, None, None)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def guard_remote(base_url: str) -> None:
    """With AUTOANNOTATOR_BLOCK_REMOTE_LLM=1 (the tests set it), only loopback endpoints are allowed."""
    if os.environ.get(BLOCK_REMOTE_ENV) != "1":
        return
    host = urlsplit(base_url).hostname or ""
    if not _is_loopback(host):
        raise LLMUnavailable(f"refusing the non-loopback LLM endpoint {base_url}: "
                             f"{BLOCK_REMOTE_ENV}=1 allows only 127.0.0.1/localhost")


def _chat(base_url: str, model: str, api_key: str | None, timeout_s: float, **extra: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=api_key or "none",  # local servers ignore it; the client insists on one
        temperature=0,
        timeout=timeout_s,
        max_retries=0,  # the verifier retries itself, with backoff and a bounded budget
        use_responses_api=False,  # OpenAI-compatible servers speak chat completions only
        **extra,
    )


@contextmanager
def llm_session(settings: Any, log_dir: Path | None = None) -> Iterator[LLMHandle]:
    """Yield the configured LLM; the embedded server (if used) runs exactly as long as the block."""
    endpoint = resolve_endpoint(settings)
    timeout_s = float(settings.llm_timeout_s)
    if not endpoint.embedded:
        assert endpoint.base_url is not None and endpoint.model is not None
        guard_remote(endpoint.base_url)
        chat = _chat(endpoint.base_url, endpoint.model, endpoint.api_key, timeout_s)
        yield LLMHandle(chat=chat, model_id=f"{endpoint.model}@{endpoint.base_url}",
                        base_url=endpoint.base_url, embedded=False, api_key=endpoint.api_key,
                        warning=endpoint.warning, timeout_s=timeout_s)
        return
    with EmbeddedServer(settings, log_dir=log_dir) as server:
        guard_remote(server.base_url)  # always loopback; checked for uniformity
        chat = _chat(server.base_url, server.model, None, timeout_s, max_tokens=EMBEDDED_MAX_TOKENS)
        assert server.model_path is not None
        # The GGUF file name, not the port, identifies the model: a cache survives restarts.
        yield LLMHandle(chat=chat, model_id=f"embedded:{server.model_path.name}",
                        base_url=server.base_url, embedded=True, server=server, timeout_s=timeout_s)


def check_reachable(handle: LLMHandle, timeout_s: float = 5.0) -> None:
    """A quick GET {base_url}/models; raises a one-line LLMUnavailable when the endpoint is unusable."""
    url = handle.base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {handle.api_key}"} if handle.api_key else {}
    host = urlsplit(url).hostname or ""
    try:
        # A proxy from the environment must not intercept a loopback server.
        with httpx.Client(timeout=timeout_s, trust_env=not _is_loopback(host)) as client:
            response = client.get(f"{url}/models", headers=headers)
    except httpx.HTTPError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise LLMUnavailable(f"cannot reach the LLM endpoint at {url}: {reason}") from None
    if response.status_code in (401, 403):
        raise LLMUnavailable(f"cannot reach the LLM endpoint at {url}: HTTP {response.status_code} "
                             "(check the API key)")
    # Some compatible servers do not list models (404/405): they answered, so they are reachable.
    if response.status_code >= 500:
        raise LLMUnavailable(f"cannot reach the LLM endpoint at {url}: HTTP {response.status_code}")
