"""Run LLM-generated code isolated: one interface (``Sandbox``), two backends (Docker, bubblewrap).

``get_sandbox("auto")`` picks Docker when an engine answers, else the local backend (which warns
loudly when bubblewrap is missing and the code would run NOT isolated).
"""

from __future__ import annotations

import logging
from typing import Literal

from autoannotator.sandbox.base import Sandbox, SandboxError, SandboxLimits, SandboxResult, Worker

log = logging.getLogger(__name__)

__all__ = ["Sandbox", "SandboxError", "SandboxLimits", "SandboxResult", "Worker", "get_sandbox"]


def get_sandbox(name: Literal["docker", "local", "auto"] = "auto", *, gpu: bool = False) -> Sandbox:
    from autoannotator.sandbox.docker import DockerSandbox
    from autoannotator.sandbox.local import LocalSandbox

    if name == "docker":
        ok, why = DockerSandbox.available()
        if not ok:
            raise SandboxError(f"docker sandbox unavailable: {why}")
        return DockerSandbox(gpu=gpu)
    if name == "local":
        return LocalSandbox(gpu=gpu)
    if name == "auto":
        ok, why = DockerSandbox.available()
        if ok:
            return DockerSandbox(gpu=gpu)
        log.info("docker sandbox unavailable (%s); using the local sandbox", why)
        return LocalSandbox(gpu=gpu)
    raise SandboxError(f"unknown sandbox {name!r}: use docker, local or auto")
