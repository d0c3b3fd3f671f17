"""What every sandbox backend shares: limits, results, the clean environment, and the worker client.

The code run here is written by an LLM: treat it as hostile. It gets a work dir, a minimal
environment (never an API key), no network, bounded memory/processes/time, and a UNIX socket
in its work dir when it is a long-lived worker.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from autoannotator.errors import UserError
from autoannotator.sandbox import worker_protocol
from autoannotator.sandbox.worker_protocol import SOCKET_ENV, Client, RemoteError

log = logging.getLogger(__name__)

SANDBOX_UID = 65534  # "nobody": owns nothing on the host
SOCKET_NAME = ".aa-worker.sock"
TAIL_CHARS = 8000
# Any variable whose name says it holds a credential stays out, whoever asks for it.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# Passed through from the host only when set: device selection, no credentials.
_PASS_THROUGH = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "TZ")


class SandboxError(UserError):
    """Sandboxed code could not be run or its worker failed; the message is one line."""


class SandboxLimits(BaseModel):
    memory_mb: int = Field(default=2048, ge=32)
    pids: int = Field(default=128, ge=8)
    cpus: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)  # wall clock of a run; start-up bound of a worker
    tmpfs_mb: int = Field(default=256, ge=1)  # size of /tmp inside (RAM, also charged to memory_mb)
    file_mb: int = Field(default=2048, ge=1)  # largest single file the code may write (RLIMIT_FSIZE)
    # A long-lived worker is stopped after this long (wall clock), whatever it does: generated code
    # must not outlive the run that needs it by days. Its CPU time is capped to lifetime x cpus too.
    worker_lifetime_s: float = Field(default=12 * 3600.0, gt=0)


class SandboxResult(BaseModel):
    exit_code: int  # 128 + N when killed by signal N, like a shell
    stdout: str  # the last TAIL_CHARS characters
    stderr: str
    timed_out: bool
    killed_reason: str | None  # which limit stopped or broke the run, when one did
    seconds: float
    backend: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def tail(data: bytes | str, n: int = TAIL_CHARS) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text[-n:]


def last_line(text: str, n: int = 200) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:n] if lines else ""


def sandbox_env(home: str, threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of sandboxed code: an allow-list, never the host's environment."""
    env = {
        "HOME": home,
        "PYTHONPATH": home,  # finds worker_protocol.py next to the script
        "LANG": "C.UTF-8",
        "USER": "nobody",
        "LOGNAME": "nobody",
        "TMPDIR": "/tmp",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
    }
    env.update({k: os.environ[k] for k in _PASS_THROUGH if k in os.environ})
    for key, value in (extra or {}).items():
        if _SECRET_NAME.search(key):
            raise SandboxError(f"refusing to pass {key} into the sandbox: credentials never go to generated code")
        env[key] = value
    return {k: v for k, v in env.items() if not _SECRET_NAME.search(k)}


def threads_for(limits: SandboxLimits) -> int:
    return max(1, math.floor(limits.cpus))


def drops_to_nobody() -> bool:
    """As root the sandboxed code runs as uid 65534; otherwise as the (unprivileged) caller."""
    return os.geteuid() == 0


def prepare_work_dir(work_dir: Path, script: Path) -> tuple[Path, str]:
    """Create the work dir, make it the sandbox user's, stage the script and worker_protocol.py in it.

    Returns the resolved work dir and the script's path relative to it."""
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    script = Path(script).resolve()
    if not script.is_file():
        raise SandboxError(f"script not found: {script}")
    if not script.is_relative_to(work):  # the sandbox sees only its work dir
        shutil.copyfile(script, work / script.name)
        script = work / script.name
    shutil.copyfile(worker_protocol.__file__, work / "worker_protocol.py")
    for staged in (script, work / "worker_protocol.py"):
        os.chmod(staged, 0o644)
    if drops_to_nobody():
        os.chown(work, SANDBOX_UID, SANDBOX_UID)
        os.chmod(work, 0o700)
    sock = work / SOCKET_NAME
    if len(str(sock).encode()) > 107:
        raise SandboxError(f"work dir path too long for a UNIX socket (107 bytes max): {sock}")
    sock.unlink(missing_ok=True)
    return work, str(script.relative_to(work))


def explain(limits: SandboxLimits, *, exit_code: int, output: str, timed_out: bool,
            oom: bool = False, pids_hit: bool = False) -> str | None:
    """Say which limit stopped or broke a run, as far as the backend can tell.

    ``output``: stdout + stderr tails; a MemoryError or EAGAIN there is the fallback evidence
    where the backend cannot read its cgroup's counters."""
    reasons = []
    if timed_out:
        reasons.append(f"timeout: still running after {limits.timeout_s:g} s, killed")
    if oom or "MemoryError" in output:
        reasons.append(f"memory limit ({limits.memory_mb} MB) exceeded")
    if pids_hit or "Resource temporarily unavailable" in output:
        reasons.append(f"process limit ({limits.pids}) reached")
    if exit_code == 128 + signal.SIGXCPU:
        reasons.append("CPU time limit exceeded")
    if exit_code == 128 + signal.SIGXFSZ:
        reasons.append(f"file size limit ({limits.file_mb} MB) exceeded")
    if not reasons and exit_code == 128 + signal.SIGKILL:
        reasons.append("killed (SIGKILL), probably by the memory limit")
    return "; ".join(reasons) or None


class Worker(ABC):
    """A long-lived sandboxed process answering JSON requests over a UNIX socket in its work dir.

    Any failure (death, a call past its timeout) stops and removes the worker, then raises a
    one-line SandboxError. A handler exception raises SandboxError but leaves the worker serving."""

    def __init__(self, backend: str, socket_path: Path) -> None:
        self.backend = backend
        self.socket_path = socket_path
        self._client: Client | None = None
        self._closed = False
        self._expired = False
        self._lifetime: threading.Timer | None = None

    def limit_lifetime(self, seconds: float) -> None:
        """Stop the worker after ``seconds`` from the host side (a hung or busy worker dies too)."""
        def expire() -> None:
            self._expired = True
            try:
                self._stop()
            except Exception:  # noqa: BLE001 - a timer thread has no one to tell
                pass

        self._lifetime_s = seconds
        self._lifetime = threading.Timer(seconds, expire)
        self._lifetime.daemon = True
        self._lifetime.start()

    @abstractmethod
    def exit_code(self) -> int | None:
        """None while running."""

    @abstractmethod
    def _log_tail(self) -> str:
        """The last of its stderr (and stdout), for error messages."""

    @abstractmethod
    def _stop(self) -> None:
        """Kill it and release everything it holds; idempotent."""

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.exit_code() is not None:
                self._fail("worker exited before serving")
            if self.socket_path.exists():
                try:
                    self._client = Client(str(self.socket_path))
                    return
                except OSError:
                    pass  # bound but not yet listening
            if time.monotonic() > deadline:
                self._fail(f"worker did not open its socket within {timeout_s:g} s")
            time.sleep(0.02)

    def call(self, payload: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
        if self._expired:
            self.close()
            raise SandboxError(f"{self.backend} worker reached its lifetime limit "
                               f"({getattr(self, '_lifetime_s', 0):g} s) and was stopped; resume the run to start a new one")
        if self._client is None:
            raise SandboxError(f"{self.backend} worker is closed")
        try:
            return self._client.call(payload, timeout_s)
        except RemoteError as exc:
            raise SandboxError(f"{self.backend} worker handler failed: {last_line(str(exc))}") from None
        except TimeoutError:
            self._fail(f"did not answer within {timeout_s:g} s; stopped")
        except (OSError, EOFError, ValueError) as exc:
            self._fail(f"connection lost ({exc})")
        raise AssertionError("unreachable")

    def _fail(self, what: str) -> None:
        if self._expired:  # the host stopped it: say why, not just that the socket went away
            what = f"reached its lifetime limit ({getattr(self, '_lifetime_s', 0):g} s) and was stopped"
        code = None
        for _ in range(50):  # a worker that just died may need a moment to be reaped
            code = self.exit_code()
            if code is not None:
                break
            time.sleep(0.02)
        detail = last_line(self._log_tail()) if code is not None else ""
        self.close()
        msg = f"{self.backend} worker {what}"
        if code is not None:
            msg += f"; exit code {code}"
        if detail:
            msg += f": {detail}"
        raise SandboxError(msg)

    @property
    def alive(self) -> bool:
        return not self._closed and self.exit_code() is None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._lifetime is not None:
            self._lifetime.cancel()
        if self._client is not None:
            self._client.close()
            self._client = None
        try:
            self._stop()
        finally:
            try:
                self.socket_path.unlink(missing_ok=True)
            except OSError:
                pass

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leak a sandboxed process
        try:
            self.close()
        except Exception:
            pass


class Sandbox(ABC):
    name: str = "abstract"
    isolated: bool = True  # no network, no host files beyond what it is shown
    # False: may run only the program's own vetted templates, never LLM-written code (see get_sandbox).
    runs_generated_code: bool = True
    isolated: bool = False

    @abstractmethod
    def run(self, script: Path, work_dir: Path, args: list[str] | None = None,
            limits: SandboxLimits | None = None, *, env: dict[str, str] | None = None) -> SandboxResult:
        """Run ``python script args`` once inside the sandbox, killed after limits.timeout_s."""

    @abstractmethod
    def start_worker(self, script: Path, work_dir: Path, limits: SandboxLimits | None = None,
                     *, env: dict[str, str] | None = None) -> Worker:
        """Start ``python script`` (which calls worker_protocol.serve) and wait until it listens."""

    @staticmethod
    def worker_env(home: str) -> dict[str, str]:
        return {SOCKET_ENV: f"{home}/{SOCKET_NAME}"}
