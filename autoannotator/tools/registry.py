"""The single registry of tools the LLM can call, and of third-party SLM adapters.

Tools come from three places, in this order:
  1. built-ins (this package), source ``builtin``;
  2. the entry point group ``autoannotator.tools``, source ``entry point <dist>:<name>``;
  3. files named in ``settings.tool_paths`` (``path/to/file.py`` or ``path/to/file.py:factory``),
     source ``config path <path>``.
A plugin object is a ``BaseTool``, or a callable ``(settings, context) -> BaseTool | list[BaseTool]``.
A plugin that fails to import, build, or return tools is skipped with one warning line: a broken
third-party file must never stop a labelling run. Built-ins win every name clash, then first come.

Built-ins come in two groups: ``plan`` (the meta-controller's: search_models, read_model_card,
define_task, probe_models, select_models, write_deployment_code) and ``loop`` (the chat's: the run
tools and the loop's steps run_ensemble, verify_samples, launch_finetune). Plugins join every group.
SLM adapters (third-party model kinds) are registered in ``slm/adapters.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal

from langchain_core.tools import BaseTool
from pydantic import BaseModel

from autoannotator.plugins import ep_label, entry_points, load_path_object, one_line
from autoannotator.tools.base import result_model_of

log = logging.getLogger(__name__)

TOOLS_GROUP = "autoannotator.tools"
BUILTIN = "builtin"
ToolFactory = Callable[[Any, Any], "BaseTool | list[BaseTool]"]
Group = Literal["plan", "loop"]


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

def builtin_factories(group: Group = "plan") -> list[ToolFactory]:
    """Factories of the built-in tools of ``group``; add new built-ins here (imports stay lazy: startup is cheap)."""
    if group == "loop":
        from autoannotator.tools.loop_tools import make_loop_tools

        return [make_loop_tools]
    from autoannotator.tools.plan_tools import (
        make_define_task_tool,
        make_probe_models_tool,
        make_read_model_card_tool,
        make_search_models_tool,
        make_select_models_tool,
        make_write_deployment_code_tool,
    )

    return [make_search_models_tool, make_read_model_card_tool, make_define_task_tool, make_probe_models_tool,
            make_select_models_tool, make_write_deployment_code_tool]


def default_registry(settings: Any = None, context: Any = None, group: Group = "plan") -> ToolRegistry:
    """Built-ins of ``group``, then entry-point plugins, then ``settings.tool_paths`` files."""
    registry = ToolRegistry()
    for factory in builtin_factories(group):
        for tool in _as_tools(factory(settings, context), "builtin"):
            registry.register(tool, source=BUILTIN)
    for ep in entry_points(TOOLS_GROUP):
        _load_plugin(registry, f"entry point {ep_label(ep)}", ep.load, settings, context)
    for spec in getattr(settings, "tool_paths", None) or []:
        _load_plugin(registry, f"config path {spec}", lambda s=str(spec): load_path_object(s), settings, context)
    return registry


# --- plugins -------------------------------------------------------------------------------------

def _load_plugin(registry: ToolRegistry, source: str, load: Callable[[], Any], settings: Any, context: Any) -> None:
    try:
        obj = load()
        tools = _as_tools(obj if isinstance(obj, (BaseTool, list, tuple)) else obj(settings, context), source)
    except Exception as exc:  # whatever a third party's code raises, the run goes on without it
        registry._warn(f"skipped tool plugin {source}: {type(exc).__name__}: {one_line(exc)}")
        return
    for tool in tools:
        registry.register(tool, source=source)


def _as_tools(obj: Any, source: str) -> list[BaseTool]:
    tools = [obj] if isinstance(obj, BaseTool) else list(obj) if isinstance(obj, Iterable) else [obj]
    bad = [t for t in tools if not isinstance(t, BaseTool)]
    if bad or not tools:
        raise TypeError(f"{source} gave {bad[0] if bad else 'no tools'!r}, not LangChain tools")
    return tools
