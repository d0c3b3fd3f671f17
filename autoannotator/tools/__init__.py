"""Tools the orchestrating LLM can call, every one listed in ``registry.py`` (plan tools for the
meta-controller, loop tools for the chat), each a thin wrapper built with ``base.make_tool``.

``default_registry(settings, context, group)`` is the entry point; see ``registry`` for how
third-party tools plug in (and ``slm/adapters.py`` for third-party SLM kinds).
"""

from autoannotator.tools.base import make_tool, result_model_of
from autoannotator.tools.registry import ToolInfo, ToolRegistry, default_registry

__all__ = ["ToolInfo", "ToolRegistry", "default_registry", "make_tool", "result_model_of"]
