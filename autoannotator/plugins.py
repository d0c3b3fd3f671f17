"""Loading third-party code: entry points and plugin files, with one-line reasons when they fail.
Used by the tool registry (``tools/registry.py``) and the SLM adapters (``slm/adapters.py``)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def load_path_object(spec: str) -> Any:
    """The object ``file.py:name`` names (``make_tool``, else the module's tools, if no name is given)."""
    path_part, sep, attr = spec.rpartition(":")
    if not sep or not attr.isidentifier():  # no factory named (or a Windows drive colon)
        path_part, attr = spec, ""
    path = Path(path_part).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    # A name unique to the file's path, so two plugins both called tools.py do not collide.
    name = f"autoannotator_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module = sys.modules.get(name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # pydantic resolves a plugin's annotations through sys.modules
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    if attr:
        return getattr(module, attr)
    from langchain_core.tools import BaseTool  # lazy: SLM adapters load through here without LangChain

    if hasattr(module, "make_tool"):
        return module.make_tool
    found = [v for v in vars(module).values() if isinstance(v, BaseTool)]
    if not found:
        raise AttributeError(f"{path} has no make_tool and no tool objects; name one as {path}:factory")
    return found


def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    try:
        return list(importlib.metadata.entry_points(group=group))
    except Exception as exc:  # a broken installed distribution's metadata
        log.warning("cannot read entry points %s: %s", group, one_line(exc))
        return []


def ep_label(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name}:{ep.name}" if dist is not None else ep.name


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
