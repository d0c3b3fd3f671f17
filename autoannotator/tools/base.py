"""How every autoannotator tool is built: a pydantic args model in, a pydantic result model out.

The LLM sees the args schema (LangChain turns it into the function-calling schema) and gets the
result as a plain dict (``result.model_dump(mode="json")``), so a tool's output is always JSON.
The result model class rides on ``tool.metadata["result_model"]`` so the registry can describe
what a tool returns, and callers can re-validate a result they stored.

Bad arguments from the LLM must not crash a graph: they come back as one readable message
(``invalid arguments for <tool>: <field>: <problem>``) the model can correct on its next turn.
A tool that cannot do its job for a reason the model should hear (unknown model id, say)
raises ``ToolException``; that too becomes a message rather than an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, ValidationError

A = TypeVar("A", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

__all__ = ["ToolException", "make_tool", "result_model_of", "validation_message"]


def validation_message(tool_name: str, exc: Exception) -> str:
    """One line per bad field, so the LLM sees which argument to fix and why."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(input)'}: {e['msg']}"
                             for e in exc.errors()[:5])
    else:  # pydantic v1 errors from a third-party tool: no structured list to walk
        problems = str(exc).replace("\n", " ")
    return f"invalid arguments for {tool_name}: {problems}"


def make_tool(func: Callable[[A], R], *, name: str, description: str, args_schema: type[A],
              result_model: type[R], metadata: dict[str, Any] | None = None) -> StructuredTool:
    """A StructuredTool that validates ``args_schema`` in and ``result_model`` out."""

    def run(**kwargs: Any) -> dict[str, Any]:
        # LangChain passes only the fields the caller set; re-validating fills the defaults in.
        args = args_schema.model_validate(kwargs)
        try:
            result = result_model.model_validate(func(args))
        except ValidationError as exc:
            # Past the args check a ValidationError is our bug, not the caller's: LangChain would
            # report it as "invalid arguments", so re-raise it as what it is.
            raise RuntimeError(f"tool {name} built an invalid result: {exc}") from exc
        return result.model_dump(mode="json")

    return StructuredTool.from_function(
        func=run, name=name, description=description, args_schema=args_schema,
        metadata={"result_model": result_model, **(metadata or {})},
        handle_validation_error=lambda exc: validation_message(name, exc),
        handle_tool_error=True,
    )


def result_model_of(tool: BaseTool) -> type[BaseModel] | None:
    """The result model a tool declared, or None for a third-party tool that declared none."""
    model = (tool.metadata or {}).get("result_model")
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None
