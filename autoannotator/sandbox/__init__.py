"""Run LLM-generated code isolated: one interface (``Sandbox``), two backends (Docker, bubblewrap).

``get_sandbox(name)``:

- ``docker``: a container (fails when no engine answers);
- ``local``: bubblewrap (fails when bwrap cannot start a sandbox here);
- ``auto``: docker when an engine answers, else bubblewrap, else a *vetted-only* local runner that is
  NOT isolated and so never runs LLM-written code: the deployment falls back to the vetted template
  and the models run in-process (``runs_generated_code`` is False; ``fallback_note`` says so in one line);
- ``unsafe-local``: generated code as a plain subprocess, NOT isolated: only when the user asks.
"""

from __future__ import annotations

import logging
from typing import Literal

from autoannotator.sandbox.base import Sandbox, SandboxError, SandboxLimits, SandboxResult, Worker

log = logging.getLogger(__name__)

__all__ = ["Sandbox", "SandboxError", "SandboxLimits", "SandboxResult", "Worker", "get_sandbox", "fallback_note"]

SandboxName = Literal["docker", "local", "auto", "unsafe-local"]


def get_sandbox(name: SandboxName = "auto", *, gpu: bool = False) -> Sandbox:
    from autoannotator.sandbox.docker import DockerSandbox
    from autoannotator.sandbox.local import LocalSandbox

    if name == "docker":
        ok, why = DockerSandbox.available()
        if not ok:
            raise SandboxError(f"docker sandbox unavailable: {why}")
        return DockerSandbox(gpu=gpu)
    if name == "local":
        local = LocalSandbox(gpu=gpu)
        if not local.isolated:
            raise SandboxError(f"local sandbox unavailable: {local.isolation_problem}; install bubblewrap, use "
                               "--sandbox docker, or --sandbox unsafe-local to run generated code NOT isolated")
        return local
    if name == "unsafe-local":
        return LocalSandbox(gpu=gpu, use_bwrap=False)
    if name == "auto":
        ok, why = DockerSandbox.available()
        if ok:
            return DockerSandbox(gpu=gpu)
        local = LocalSandbox(gpu=gpu)
        if local.isolated:
            return local
        log.info("no sandbox: docker (%s), bubblewrap (%s)", why, local.isolation_problem)
        fallback = LocalSandbox(gpu=gpu, use_bwrap=False, vetted_only=True)
        fallback.why_not_isolated = f"no Docker engine, {local.isolation_problem}"  # type: ignore[attr-defined]
        return fallback
    raise SandboxError(f"unknown sandbox {name!r}: use auto, docker, local or unsafe-local")


def fallback_note(sandbox: Sandbox) -> str | None:
    """The one line to show when ``auto`` found no isolation (None when the sandbox runs generated code)."""
    if sandbox.runs_generated_code:
        return None
    why = getattr(sandbox, "why_not_isolated", "no isolation available")
    return (f"no sandbox here ({why}): the small models run in-process from the vetted template and no "
            "LLM-written code is run; install bubblewrap or Docker, or pass --sandbox unsafe-local to run it unisolated")
