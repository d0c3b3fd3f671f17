"""autoannotator: label text with a small-model ensemble, orchestrated by an LLM (arXiv 2506.16393).

    import autoannotator as aa
    result = aa.label(df, task="label these reviews for sentiment", labels=["positive", "negative"])
    result.data, result.report, result.run_dir

``label``, ``plan``, ``bench``, ``resume`` and the result types live in ``autoannotator.api`` and
are loaded on first use, so ``import autoannotator`` stays cheap (no torch, no LangChain) and this
file can be copied into a sandbox on its own (the deployment worker imports it).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = ("label", "plan", "bench", "resume", "LabelResult", "BenchResult", "Report")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    # importlib, not an import statement: the package must not depend on its own submodules at
    # import time (the sandbox copies only this file and the SLM runtime).
    if name in _API:
        return getattr(importlib.import_module("autoannotator.api"), name)
    raise AttributeError(f"module 'autoannotator' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
