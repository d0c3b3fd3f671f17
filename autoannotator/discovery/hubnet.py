"""Reaching the Hugging Face Hub from tools: decide online/offline fast, fetch small metadata files.

Why not just call the Hub and catch the error: huggingface_hub retries connection failures with
back-off (about 20 s for ``list_models``) and by default has no timeout, so an agent would hang
on a machine without network. One GET with a 3 s timeout decides instead, and a failure is
remembered for a minute so a burst of tool calls pays it once.

``HF_ENDPOINT`` and the offline flags are read at call time, not at import (huggingface_hub
freezes ``constants.ENDPOINT`` when it is imported), so a test or a user can redirect them later.

Metadata files fetched online (``config.json`` for labels, ``README.md`` for cards) go to a cache
of their own, not the Hugging Face cache: a repo folder there holding only a ``config.json``
would look like a runnable model to ``slm.catalog.discover_hf_models`` and then fail to load.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

HUB_TIMEOUT_S = 3.0
DOWN_MEMORY_S = 60.0
_down_until: dict[str, float] = {}  # endpoint -> monotonic time until which it counts as down


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_status() -> tuple[bool, str | None]:
    """(True, None) when the Hub answers; else (False, why) — offline flag, or unreachable."""
    from autoannotator.slm.hf import hub_offline  # lazily: slm.hf imports torch

    if hub_offline():
        return False, "offline mode (HF_HUB_OFFLINE) is set"
    ep = endpoint()
    if _down_until.get(ep, 0.0) > time.monotonic():
        return False, f"{ep} did not answer a moment ago"
    try:
        from huggingface_hub.utils import get_session

        response = get_session().get(f"{ep}/api/models", params={"limit": 1}, timeout=HUB_TIMEOUT_S)
        if response.status_code >= 500:
            raise ConnectionError(f"HTTP {response.status_code}")
    except Exception as exc:  # DNS, refused, timeout, proxy, offline hook: all mean "use the local catalog"
        _down_until[ep] = time.monotonic() + DOWN_MEMORY_S
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        log.info("Hugging Face Hub unreachable at %s: %s", ep, why)
        return False, f"{ep} unreachable: {why}"
    return True, None


def mark_down(reason: str) -> None:
    """A call failed after the probe said online: stop trying for a while."""
    _down_until[endpoint()] = time.monotonic() + DOWN_MEMORY_S
    log.info("Hugging Face Hub marked down: %s", reason)


def metadata_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "autoannotator" / "hub-metadata"


def fetch_file(repo_id: str, filename: str) -> Path | None:
    """Download one small file of a model repo into the metadata cache; None if the repo lacks it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=metadata_cache_dir(), endpoint=endpoint(),
                                    etag_timeout=HUB_TIMEOUT_S))
    except (RemoteEntryNotFoundError, RepositoryNotFoundError):  # not a network failure: it is absent
        return None


def cached_file(repo_id: str, filename: str) -> Path | None:
    """The newest local copy of a repo file: the Hugging Face cache first, then the metadata cache."""
    from huggingface_hub import try_to_load_from_cache

    from autoannotator.slm.hf import hub_cache_dir

    for cache in (hub_cache_dir(), metadata_cache_dir()):
        try:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
        except Exception:  # a malformed id (a path, say) is simply not in the cache
            continue
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def network_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the Hub failed us", as opposed to bugs here (which should surface)."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [OSError, HfHubHTTPError, json.JSONDecodeError]
    # Whichever HTTP stack huggingface_hub runs on is already imported; its base error covers
    # connect, read and protocol failures.
    for module, attr in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        if (err := getattr(sys.modules.get(module), attr, None)) is not None:
            errors.append(err)
    return tuple(errors)
