"""The single registry of tools the LLM can call, and of third-party SLM adapters.

Tools come from three places, in this order:
  1. built-ins (this package), source ``builtin``;
  2. the entry point group ``autoannotator.tools``, source ``entry point <dist>:<name>``;
  3. files named in ``settings.tool_paths`` (``path/to/file.py`` or ``path/to/file.py:factory``),
     source ``config path <path>``.
A plugin object is a ``BaseTool``, or a callable ``(settings, context) -> BaseTool | list[BaseTool]``.
A plugin that fails to import, build, or return tools is skipped with one warning line: a broken
third-party file must never stop a labelling run. Built-ins win every name clash, then first come.

SLM adapters: the entry point group ``autoannotator.slm_adapters`` maps a spec prefix (the part
before ``:``, e.g. ``myprefix`` for ``myprefix:some-model``) to ``(spec, task, settings) -> SLM``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.tools import BaseTool
from pydantic import BaseModel

from autoannotator.tools.base import result_model_of

if TYPE_CHECKING:
    from autoannotator.config import Settings
    from autoannotator.slm.base import SLM
    from autoannotator.task import TaskSpec

log = logging.getLogger(__name__)

TOOLS_GROUP = "autoannotator.tools"
SLM_ADAPTERS_GROUP = "autoannotator.slm_adapters"
BUILTIN = "builtin"
RESERVED_SLM_PREFIXES = frozenset({"hf"})  # handled by catalog.build_model itself
SLMFactory = Callable[[str, "TaskSpec", "Settings"], "SLM"]
ToolFactory = Callable[[Any, Any], "BaseTool | list[BaseTool]"]


class ToolInfo(BaseModel):
    name: str
    description: str
    source: str
    args_schema: dict[str, Any]
    result_schema: dict[str, Any] | None = None


class ToolRegistry:
    """Tools by name, each with where it came from; ``tools()`` is what a graph binds."""

    def __init__(self) -> None:
        self._tools: dict[str, tuple[BaseTool, str]] = {}
        self.skipped: list[str] = []  # one line per plugin that was not loaded, for reports

    def register(self, tool: BaseTool, *, source: str) -> bool:
        """Add ``tool``; False when a clash kept the existing one (built-ins win, then first come)."""
        if not isinstance(tool, BaseTool):
            raise TypeError(f"not a LangChain tool: {tool!r} (from {source})")
        held = self._tools.get(tool.name)
        if held is not None:
            if held[1] == BUILTIN and source == BUILTIN:
                raise ValueError(f"two built-in tools are named {tool.name!r}")
            if source != BUILTIN:
                self._warn(f"tool {tool.name!r} from {source} ignored: the name is taken by {held[1]}")
                return False
            self._warn(f"tool {tool.name!r} from {held[1]} replaced by the built-in of that name")
        self._tools[tool.name] = (tool, source)
        return True

    def get(self, name: str) -> BaseTool:
        try:
            return self._tools[name][0]
        except KeyError:
            raise KeyError(f"no tool {name!r}; known: {', '.join(self.names()) or 'none'}") from None

    def source(self, name: str) -> str:
        return self._tools[name][1]

    def names(self) -> list[str]:
        return list(self._tools)

    def tools(self) -> list[BaseTool]:
        return [tool for tool, _ in self._tools.values()]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def describe(self) -> list[ToolInfo]:
        out = []
        for tool, source in self._tools.values():
            result = result_model_of(tool)
            out.append(ToolInfo(name=tool.name, description=tool.description, source=source,
                                args_schema=tool.get_input_schema().model_json_schema(),
                                result_schema=result.model_json_schema() if result else None))
        return out

    def _warn(self, line: str) -> None:
        self.skipped.append(line)
        log.warning(line)


# --- built-ins -----------------------------------------------------------------------------------

def builtin_factories() -> list[ToolFactory]:
    """Factories of the built-in tools; add new built-ins here (imports stay lazy: startup is cheap)."""
    from autoannotator.tools.cards import make_read_model_card_tool
    from autoannotator.tools.hub import make_search_models_tool

    return [make_search_models_tool, make_read_model_card_tool]


def default_registry(settings: Any = None, context: Any = None) -> ToolRegistry:
    """Built-ins, then entry-point plugins, then ``settings.tool_paths`` files."""
    registry = ToolRegistry()
    for factory in builtin_factories():
        for tool in _as_tools(factory(settings, context), "builtin"):
            registry.register(tool, source=BUILTIN)
    for ep in _entry_points(TOOLS_GROUP):
        _load_plugin(registry, f"entry point {_ep_label(ep)}", ep.load, settings, context)
    for spec in getattr(settings, "tool_paths", None) or []:
        _load_plugin(registry, f"config path {spec}", lambda s=str(spec): load_path_object(s), settings, context)
    return registry


# --- plugins -------------------------------------------------------------------------------------

def _load_plugin(registry: ToolRegistry, source: str, load: Callable[[], Any], settings: Any, context: Any) -> None:
    try:
        obj = load()
        tools = _as_tools(obj if isinstance(obj, (BaseTool, list, tuple)) else obj(settings, context), source)
    except Exception as exc:  # whatever a third party's code raises, the run goes on without it
        registry._warn(f"skipped tool plugin {source}: {type(exc).__name__}: {_one_line(exc)}")
        return
    for tool in tools:
        registry.register(tool, source=source)


def _as_tools(obj: Any, source: str) -> list[BaseTool]:
    tools = [obj] if isinstance(obj, BaseTool) else list(obj) if isinstance(obj, Iterable) else [obj]
    bad = [t for t in tools if not isinstance(t, BaseTool)]
    if bad or not tools:
        raise TypeError(f"{source} gave {bad[0] if bad else 'no tools'!r}, not LangChain tools")
    return tools


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
    if hasattr(module, "make_tool"):
        return module.make_tool
    found = [v for v in vars(module).values() if isinstance(v, BaseTool)]
    if not found:
        raise AttributeError(f"{path} has no make_tool and no tool objects; name one as {path}:factory")
    return found


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    try:
        return list(importlib.metadata.entry_points(group=group))
    except Exception as exc:  # a broken installed distribution's metadata
        log.warning("cannot read entry points %s: %s", group, _one_line(exc))
        return []


def _ep_label(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name}:{ep.name}" if dist is not None else ep.name


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


# --- SLM adapters --------------------------------------------------------------------------------

_warned: set[str] = set()  # build_model asks once per model: say each problem once per process


def slm_adapter_factories() -> dict[str, SLMFactory]:
    """Spec prefix -> factory from ``autoannotator.slm_adapters``; broken or clashing ones skipped."""
    from autoannotator.slm.catalog import BUILTINS

    factories: dict[str, SLMFactory] = {}
    for ep in _entry_points(SLM_ADAPTERS_GROUP):
        prefix, why = ep.name.strip(), ""
        if prefix in RESERVED_SLM_PREFIXES or prefix in BUILTINS:
            why = "the name is built in"
        elif prefix in factories:
            why = "another adapter has that prefix"
        else:
            try:
                factory = ep.load()
                if callable(factory):
                    factories[prefix] = factory
                    continue
                why = f"{factory!r} is not callable"
            except Exception as exc:  # a broken adapter must not stop the models that work
                why = f"{type(exc).__name__}: {_one_line(exc)}"
        if (line := f"skipped SLM adapter {_ep_label(ep)}: {why}") not in _warned:
            _warned.add(line)
            log.warning(line)
    return factories


def adapter_for(spec: str) -> SLMFactory | None:
    """The plugin factory for ``prefix:rest``, or None (catalog.build_model then reports the spec)."""
    prefix, sep, _ = spec.partition(":")
    return slm_adapter_factories().get(prefix.strip()) if sep else None
