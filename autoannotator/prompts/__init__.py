"""Every prompt and template lives as a file beside this module, rendered by ONE strict Jinja
environment: a missing variable is an error, never an empty string.

- ``render(name, **vars)``: a prompt (``verify_system.md``, ``chat_system.md``, ...), stripped.
- ``render_code(name, **vars)``: a program template (``deploy_worker.py.jinja``), byte-exact, whose
  ``py`` filter renders plain data only, so nothing rendered into a program can become code.
"""

from __future__ import annotations

import ast
import pprint
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2


def py_literal(value: Any) -> str:
    """A Python literal for plain data only: nothing rendered into the program can become code."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming the missing variable
    text = pprint.pformat(value, width=110, sort_dicts=False)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError):
        same = False
    if not same:
        raise ValueError(f"not plain data: {value!r}"[:200])
    return text


_env = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["py"] = py_literal


@lru_cache(maxsize=None)
def _template(name: str) -> jinja2.Template:
    try:
        source = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"no prompt file named {name!r} in autoannotator/prompts") from None
    return _env.from_string(source)


def render(name: str, **variables: Any) -> str:
    """Render prompts/<name> (e.g. 'verify_system.md'); raises jinja2.UndefinedError on a missing variable."""
    return _template(name).render(**variables).strip()


def render_code(name: str, **variables: Any) -> str:
    """Render the program template prompts/<name> exactly (trailing newline kept), as strictly."""
    return _template(name).render(**variables)
