"""Which API key goes to which LLM endpoint.

``OPENAI_API_KEY`` is a credential for OpenAI: sent to any ``--llm-base-url`` it would leak to
whoever runs that server. So it is sent only to OpenAI's own host; a key for another endpoint must be
named for it (``AUTOANNOTATOR_LLM_API_KEY`` or ``llm_api_key`` in the config file), which is then
sent wherever the user pointed the run. Pure: no I/O, the caller prints the warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

OPENAI_HOSTS = frozenset({"api.openai.com"})
_warned: set[str] = set()


@dataclass(frozen=True)
class KeyChoice:
    key: str | None
    source: str  # "llm_api_key", "OPENAI_API_KEY" or "none"
    warning: str | None = None  # say it once per host: the user has a key we chose not to send


def is_openai_host(base_url: str | None) -> bool:
    """None means the OpenAI default endpoint."""
    if base_url is None:
        return True
    parts = urlsplit(base_url)
    return parts.scheme == "https" and (parts.hostname or "").lower() in OPENAI_HOSTS


def choose_api_key(base_url: str | None, *, llm_api_key: str | None, openai_api_key: str | None) -> KeyChoice:
    """The key to send to ``base_url`` (None: OpenAI's default), and a warning when one was withheld."""
    if llm_api_key:
        return KeyChoice(llm_api_key, "llm_api_key")
    if openai_api_key:
        if is_openai_host(base_url):
            return KeyChoice(openai_api_key, "OPENAI_API_KEY")
        host = urlsplit(base_url or "").hostname or str(base_url)
        return KeyChoice(None, "none", f"OPENAI_API_KEY is not sent to {host} (only to api.openai.com); if that "
                                       f"endpoint needs a key, set AUTOANNOTATOR_LLM_API_KEY or llm_api_key")
    return KeyChoice(None, "none")


def warn_once(choice: KeyChoice, base_url: str | None) -> str | None:
    """The choice's warning the first time this process sees that endpoint, else None."""
    if choice.warning is None or (base_url or "") in _warned:
        return None
    _warned.add(base_url or "")
    return choice.warning
