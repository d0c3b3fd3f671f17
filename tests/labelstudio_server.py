"""A real Label Studio server for the round-trip tests: `label-studio start` on a loopback port, a throwaway
data dir, one admin user created non-interactively, stopped when the test session ends.

Label Studio lives in its own venv (.venv-labelstudio, made by scripts/labelstudio_env.sh) so that its
Django stack stays out of the product's. Without that venv the tests skip, saying so; under CI=true they
fail instead, because CI installs it.

Auth, as label-studio 1.23.2 does it: ``start --username --password --user-token`` creates the admin and
sets its legacy token; legacy tokens are refused (401) unless the organization allows them, which
``--enable-legacy-api-token`` sets when that first start creates the organization. With the legacy
token the fixture then asks ``POST /api/token/`` for a personal access token (a JWT refresh token),
the kind a new user copies from Account & Settings, so the tests exercise both.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LS_BIN = REPO / ".venv-labelstudio" / "bin" / "label-studio"
EMAIL, PASSWORD, LEGACY_TOKEN = "reviewer@example.com", "review-pass-123", "0123456789abcdef0123456789abcdef01234567"
START_TIMEOUT_S = float(os.environ.get("LABEL_STUDIO_START_TIMEOUT", "600"))  # first start: DB setup, ~1.5-2.5 min


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    legacy_token: str  # accepted: the organization was created with legacy tokens enabled
    personal_token: str  # a personal access token (JWT refresh token), as Account & Settings gives one
    data_dir: Path
    log: Path
    start_seconds: float  # how long the start took until /health answered, for the report

    def api(self, method: str, path: str, body: object = None, token: str | None = None) -> object:
        """A raw API call (stdlib only, independent of the client under test): its JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Token {token or self.legacy_token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(log: Path, n: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"label-studio exited with {proc.returncode} before answering /health:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                if resp.status == 200 and json.loads(resp.read()).get("status") == "UP":
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(2)
    pytest.fail(f"label-studio did not answer {url}/health within {timeout_s:.0f} s:\n{_log_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it runs in its own session), SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def require_label_studio() -> Path:
    """The label-studio executable; skips (fails under CI=true) when its venv is missing."""
    if LS_BIN.is_file():
        return LS_BIN
    reason = f"Label Studio is not installed in {LS_BIN.parent.parent.name}: run scripts/labelstudio_env.sh"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " (CI installs it; missing here is a CI bug)")
    pytest.skip(reason)


def serve(data_dir: Path) -> Iterator[LabelStudioServer]:
    """Start Label Studio with data under ``data_dir``, yield it once /health answers, stop it afterwards."""
    binary = require_label_studio()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "label-studio.log"
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir / "data"),
           # Keep the server on loopback: no PyPI version check, no analytics, no Sentry.
           "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    started = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(binary), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
             "--username", EMAIL, "--password", PASSWORD, "--user-token", LEGACY_TOKEN, "--enable-legacy-api-token"],
            cwd=data_dir, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        _wait_healthy(url, proc, log, START_TIMEOUT_S)
        start_seconds = time.monotonic() - started
        server = LabelStudioServer(url, LEGACY_TOKEN, "", data_dir, log, start_seconds)
        pat = server.api("POST", "/api/token/")
        assert isinstance(pat, dict) and str(pat.get("token", "")).count(".") == 2, pat
        yield LabelStudioServer(url, LEGACY_TOKEN, pat["token"], data_dir, log, start_seconds)
    finally:
        _stop(proc)
