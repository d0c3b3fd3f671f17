"""Item 12: auto never runs LLM-written code unisolated; bwrap has seccomp and an empty bounding set;
workers get a CPU cap and a lifetime; Docker has no writable /dev/shm.

The bubblewrap cases run where ``bwrap`` is on PATH (skipped otherwise, failed under CI=true); the
docker case checks the container's configuration with a recording client (no engine here).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from autoannotator import sandbox as sandbox_pkg
from autoannotator.sandbox import SandboxError, SandboxLimits, fallback_note, get_sandbox
from autoannotator.sandbox.docker import DockerSandbox
from autoannotator.sandbox.local import LocalSandbox


def _need_bwrap() -> None:
    if shutil.which("bwrap") is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("bubblewrap missing under CI")
        pytest.skip("bubblewrap not on PATH")


def _no_docker(monkeypatch):
    monkeypatch.setattr(DockerSandbox, "available", staticmethod(lambda: (False, "no engine (test)")))


def test_auto_without_isolation_never_runs_generated_code(monkeypatch, caplog):
    _no_docker(monkeypatch)
    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap either
    import autoannotator.sandbox.local as local

    local._bwrap_problem.cache_clear()
    try:
        with _nowarn():
            sb = get_sandbox("auto")
        assert not sb.isolated and not sb.runs_generated_code and sb.name == "vetted-only"
        note = fallback_note(sb)
        assert note is not None and "\n" not in note and "unsafe-local" in note and "in-process" in note
        with pytest.raises(SandboxError, match="unsafe-local"):
            get_sandbox("local")
        unsafe = get_sandbox("unsafe-local")
        assert unsafe.runs_generated_code and not unsafe.isolated and unsafe.name == "unsafe-local"
        assert fallback_note(unsafe) is None
    finally:
        local._bwrap_problem.cache_clear()


class _nowarn:
    """No raw Python warning may be printed (the old code printed the same one twice)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        assert not [w for w in self.caught if issubclass(w.category, RuntimeWarning)], self.caught


def test_codegen_refuses_llm_code_without_isolation(monkeypatch, tmp_path):
    """write_deployment_code never asks the LLM for a program when the sandbox cannot run one safely."""
    codegen = pytest.importorskip("autoannotator.deploy.codegen", reason="after the layout refactor")
    asked: list[str] = []

    class Chat:
        def with_structured_output(self, *a, **k):
            asked.append("asked")
            raise AssertionError("the LLM must not be asked for code")

    sb = LocalSandbox(use_bwrap=False, vetted_only=True)
    assert codegen.may_customise(sb) is False
    assert codegen.may_customise(LocalSandbox(use_bwrap=False)) is True


_PROBE = r"""
import json, os, resource, ctypes
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
libc = ctypes.CDLL(None, use_errno=True)
r = libc.syscall(272, 0x10000000)  # unshare(CLONE_NEWUSER)
print(json.dumps({
    "CapBnd": status["CapBnd"].strip(), "CapEff": status["CapEff"].strip(), "Seccomp": status["Seccomp"].strip(),
    "NoNewPrivs": status["NoNewPrivs"].strip(), "affinity": sorted(os.sched_getaffinity(0)),
    "cpu_limit": resource.getrlimit(resource.RLIMIT_CPU)[0], "unshare_errno": ctypes.get_errno() if r else 0,
}))
"""


def test_bwrap_has_seccomp_and_an_empty_bounding_set(tmp_path):
    _need_bwrap()
    sb = get_sandbox("local")
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    res = sb.run(script, tmp_path / "work", limits=SandboxLimits(cpus=1, timeout_s=30))
    assert res.ok, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["CapBnd"] == "0000000000000000" and got["CapEff"] == "0000000000000000"
    assert got["Seccomp"] == "2" and got["NoNewPrivs"] == "1"
    assert got["unshare_errno"] == 1  # EPERM from the filter
    assert len(got["affinity"]) == 1  # cpus=1: one core
    assert 0 < got["cpu_limit"] <= 32


WORKER = r"""
import json, os, resource, socket, sys, time
from worker_protocol import serve
def handle(req):
    return {"cpu_limit": resource.getrlimit(resource.RLIMIT_CPU)[0], "affinity": sorted(os.sched_getaffinity(0))}
serve(handle)
"""


def test_worker_cpu_cap_and_lifetime(tmp_path):
    _need_bwrap()
    from autoannotator.sandbox import worker_protocol

    if not hasattr(worker_protocol, "serve"):
        pytest.skip("worker_protocol has no serve()")
    sb = get_sandbox("local")
    script = tmp_path / "w.py"
    script.write_text(WORKER)
    limits = SandboxLimits(cpus=1, timeout_s=30, worker_lifetime_s=3)
    worker = sb.start_worker(script, tmp_path / "work", limits=limits)
    try:
        reply = worker.call({"x": 1}, timeout_s=10)
        assert reply["cpu_limit"] == 3 * 1 + 1 and len(reply["affinity"]) == 1
        time.sleep(4)
        assert not worker.alive
        with pytest.raises(SandboxError, match="lifetime limit"):
            worker.call({"x": 2}, timeout_s=5)
    finally:
        worker.close()


class _Recorder:
    def __init__(self):
        self.kwargs = None

    @property
    def containers(self):
        return self

    def create(self, image, command, **kwargs):
        self.kwargs = kwargs
        return object()


def test_docker_has_no_dev_shm_and_a_cpu_backstop(tmp_path):
    sb = DockerSandbox(image="x")
    rec = _Recorder()
    sb._docker = rec  # the engine client, replaced by one that records the container's configuration
    sb._create_container(tmp_path, "w.py", [], SandboxLimits(cpus=2, worker_lifetime_s=100), None, worker=True)
    kw = rec.kwargs
    assert kw["ipc_mode"] == "none" and kw["network_mode"] == "none" and kw["read_only"] is True
    assert "/dev/shm" not in (kw.get("tmpfs") or {})
    assert kw["cap_drop"] == ["ALL"] and kw["nano_cpus"] == 2_000_000_000
    cpu = [u for u in kw["ulimits"] if u["Name"] == "cpu"][0]
    assert cpu["Hard"] == 201


def test_a_run_with_auto_and_no_isolation_runs_no_generated_code(tmp_path, endpoint, monkeypatch):
    from harness import cli_inprocess, label_args, write_data

    import autoannotator.sandbox.local as local

    _no_docker(monkeypatch)
    monkeypatch.setattr(local, "_bwrap_problem", lambda flags: "bubblewrap (bwrap) is not installed")
    data = write_data(tmp_path / "data.csv", 16)
    args = [a if a != "none" else "auto" for a in label_args(data, tmp_path / "run", endpoint)]
    assert "auto" in args
    with _nowarn():
        code, err = cli_inprocess(args, monkeypatch)
    assert code == 0, err
    plan = json.loads((tmp_path / "run" / "run.json").read_text())
    assert plan["sandbox"] == "none" and plan["deployment_code"] is None
    assert not (tmp_path / "run" / "deploy").exists()  # no program was written, let alone run
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    notes = [w for w in report["warnings"] if "no sandbox here" in w]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert " ".join(err.split()).count("no sandbox here") == 1


def test_docker_dev_shm_is_not_writable_for_real(tmp_path):
    ok, why = DockerSandbox.available()
    if not ok:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"docker unavailable under CI: {why}")
        pytest.skip(f"docker unavailable: {why}")
    script = tmp_path / "shm.py"
    script.write_text("import os\n"
                      "try:\n    open('/dev/shm/x', 'w').write('x'); print('WROTE')\n"
                      "except OSError as e:\n    print('REFUSED', e.errno)\n"
                      "print('MOUNTED' if any(' /dev/shm ' in l for l in open('/proc/mounts')) else 'NO-SHM')\n")
    res = get_sandbox("docker").run(script, tmp_path / "work", limits=SandboxLimits(timeout_s=60))
    assert res.ok, res.stderr
    assert "REFUSED" in res.stdout and "WROTE" not in res.stdout and "NO-SHM" in res.stdout
