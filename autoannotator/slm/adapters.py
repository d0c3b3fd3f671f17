"""Third-party SLM kinds: the entry point group ``autoannotator.slm_adapters`` maps a spec prefix (the
part before ``:``, e.g. ``myprefix`` for ``myprefix:some-model``) to ``(spec, task, settings) -> SLM``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from autoannotator.plugins import ep_label, entry_points, one_line

if TYPE_CHECKING:
    from autoannotator.config import Settings
    from autoannotator.slm.base import SLM
    from autoannotator.task import TaskSpec

log = logging.getLogger(__name__)

SLM_ADAPTERS_GROUP = "autoannotator.slm_adapters"
RESERVED_SLM_PREFIXES = frozenset({"hf"})  # handled by catalog.build_model itself
SLMFactory = Callable[[str, "TaskSpec", "Settings"], "SLM"]


_warned: set[str] = set()  # build_model asks once per model: say each problem once per process


def load_adapter_factories(builtin_names: Collection[str]) -> dict[str, SLMFactory]:
    """Spec prefix -> factory from ``autoannotator.slm_adapters``; broken ones, and ones that clash
    with a built-in name or another adapter, skipped with one warning each."""
    factories: dict[str, SLMFactory] = {}
    for ep in entry_points(SLM_ADAPTERS_GROUP):
        prefix, why = ep.name.strip(), ""
        if prefix in RESERVED_SLM_PREFIXES or prefix in builtin_names:
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
                why = f"{type(exc).__name__}: {one_line(exc)}"
        if (line := f"skipped SLM adapter {ep_label(ep)}: {why}") not in _warned:
            _warned.add(line)
            log.warning(line)
    return factories
