"""Tools the orchestrating LLM can call (model search, model cards, plugins), behind one registry.

``default_registry(settings, context)`` is the entry point; see ``registry`` for how third-party
tools and SLM adapters plug in, and ``base.make_tool`` for how a tool is built.
"""

from autoannotator.tools.base import make_tool, result_model_of
from autoannotator.tools.registry import ToolInfo, ToolRegistry, adapter_for, default_registry, slm_adapter_factories

__all__ = ["ToolInfo", "ToolRegistry", "adapter_for", "default_registry", "make_tool", "result_model_of",
           "slm_adapter_factories"]
