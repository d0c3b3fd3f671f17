"""Prompts live as files beside this module and render strictly: a missing variable is an error."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import jinja2

_env = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
)


@lru_cache(maxsize=None)
def _template(name: str) -> jinja2.Template:
    try:
        source = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"no prompt file named {name!r} in autoannotator/prompts") from None
    return _env.from_string(source)


def render(name: str, **variables) -> str:
    """Render prompts/<name> (e.g. 'verify_system.md'); raises jinja2.UndefinedError on a missing variable."""
    return _template(name).render(**variables).strip()
