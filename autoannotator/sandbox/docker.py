"""Run generated code in a Docker container: no network, read-only root, capped memory/pids/CPU.

Offline there is no registry to pull from, so by default the image is made from nothing
(``ensure_base_image``: an imported tar holding only /etc/passwd, /etc/group and mount points)
and the container runs the host's Python: /usr, /lib*, /bin, the interpreter's installation
(``sys.base_prefix``, exactly that directory even when it lies under /root) and the virtualenv
(``sys.prefix``) are bind-mounted read-only. Nothing else of the host is visible, the user's
home included. With a registry, build ``Dockerfile.gpu`` and pass ``image=`` (and ``gpu=True``
for NVIDIA GPUs, which needs the NVIDIA container toolkit on the host).
"""

from __future__ import annotations

import io
import logging
import math
import os
import sys
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

from autoannotator.sandbox.base import (
    SANDBOX_UID,
    SOCKET_NAME,
    Sandbox,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    Worker,
    drops_to_nobody,
    explain,
    prepare_work_dir,
    sandbox_env,
    tail,
    threads_for,
)

log = logging.getLogger(__name__)

BASE_IMAGE = "autoannotator-hostpython:1"
LABEL = "autoannotator.sandbox"
OWNER_LABEL = "autoannotator.owner-pid"  # which orchestrator process made it: tells concurrent runs apart
_INNER_WORK = "/work"
_INNER_WORK_ALT = "/sandbox-work"  # when a host path mounted read-only lies under /work (e.g. /work/repo/.venv)
_HOST_SYSTEM = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache")


def _client(timeout: int = 60) -> Any:
    import docker

    return docker.from_env(timeout=timeout)


def _pids_events(container_id: str) -> int:
    """Fork failures the container's pids cgroup saw (readable on the host while it runs)."""
    candidates = [
        f"/sys/fs/cgroup/pids/docker/{container_id}/pids.events",
        f"/sys/fs/cgroup/pids/system.slice/docker-{container_id}.scope/pids.events",
        f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/pids.events",
        f"/sys/fs/cgroup/docker/{container_id}/pids.events",
    ]
    for path in candidates:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith("max "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return 0


class DockerSandbox(Sandbox):
    name = "docker"
    isolated = True

    def __init__(self, image: str | None = None, *, gpu: bool = False) -> None:
        self.image = image
        self.gpu = gpu
        self._docker: Any = None

    @staticmethod
    def available() -> tuple[bool, str]:
        """(True, version) when a Docker engine answers, else (False, why not)."""
        try:
            client = _client(timeout=5)
            version = client.version().get("Version", "?")
            client.close()
            return True, f"docker engine {version}"
        except ImportError:
            return False, "the docker Python package is not installed"
        except Exception as exc:  # DockerException, connection refused, permission denied on the socket
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return False, f"no Docker engine reachable: {detail}"

    @property
    def client(self) -> Any:
        if self._docker is None:
            try:
                self._docker = _client()
            except Exception as exc:
                raise SandboxError(f"cannot reach the Docker engine: {str(exc)[:200]}") from None
        return self._docker

    def ensure_base_image(self) -> str:
        """Create the host-python image from an (almost) empty tar, once; no registry needed."""
        import docker.errors

        try:
            self.client.images.get(BASE_IMAGE)
            return BASE_IMAGE
        except docker.errors.ImageNotFound:
            pass
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d, mode in (("etc", 0o755), ("tmp", 0o1777), ("work", 0o755)):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, mode
                tar.addfile(info)
            # Only so that getpwuid(65534) works (getpass, torch caches); no password hashes.
            for name, text in (("etc/passwd", f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                              f"nobody:x:{SANDBOX_UID}:{SANDBOX_UID}:nobody:/work:/usr/sbin/nologin\n"),
                               ("etc/group", f"root:x:0:\nnogroup:x:{SANDBOX_UID}:\n")):
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        repo, tag = BASE_IMAGE.split(":")
        self.client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
        log.info("created the Docker image %s (host Python bind-mounted at run time)", BASE_IMAGE)
        return BASE_IMAGE

    def _host_paths(self) -> list[str]:
        if self.image is not None:
            return []
        host = [p for p in _HOST_SYSTEM if os.path.exists(p)]
        # The interpreter and the venv, each exactly: never the home directory around them.
        return host + sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix})

    def inner_work_dir(self) -> str:
        """Where the work dir appears inside: /work, unless a read-only mount would land in it."""
        clash = any(p == _INNER_WORK or p.startswith(_INNER_WORK + "/") for p in self._host_paths())
        return _INNER_WORK_ALT if clash else _INNER_WORK

    def _mounts(self, work: Path) -> dict[str, dict[str, str]]:
        mounts = {str(work): {"bind": self.inner_work_dir(), "mode": "rw"}}
        for p in self._host_paths():
            mounts.setdefault(p, {"bind": p, "mode": "ro"})
        return mounts

    def _create(self, work: Path, rel: str, args: list[str], limits: SandboxLimits,
                extra_env: dict[str, str] | None, worker: bool) -> Any:
        try:
            return self._create_container(work, rel, args, limits, extra_env, worker)
        except SandboxError:
            raise
        except Exception as exc:  # engine errors, a missing image: one line for the user
            raise SandboxError(f"cannot create the sandbox container: {str(exc).splitlines()[0][:200]}") from None

    def _create_container(self, work: Path, rel: str, args: list[str], limits: SandboxLimits,
                          extra_env: dict[str, str] | None, worker: bool) -> Any:
        from docker.types import DeviceRequest, LogConfig, Ulimit

        image = self.image or self.ensure_base_image()
        inner = self.inner_work_dir()
        env = sandbox_env(inner, threads_for(limits), extra_env)
        if worker:
            env.update(self.worker_env(inner))
        if self.image is None:  # else keep the image's PATH and its python
            env["PATH"] = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
        python = sys.executable if self.image is None else "python"
        uid = f"{SANDBOX_UID}:{SANDBOX_UID}" if drops_to_nobody() else f"{os.getuid()}:{os.getgid()}"
        wall = limits.worker_lifetime_s if worker else limits.timeout_s
        cpu_s = math.ceil(wall * max(1.0, limits.cpus)) + 1
        return self.client.containers.create(
            image, [python, f"{inner}/{rel}", *args],
            name=f"aa-sandbox-{uuid.uuid4().hex[:12]}", labels={LABEL: "1", OWNER_LABEL: str(os.getpid())},
            user=uid, working_dir=inner, environment=env, volumes=self._mounts(work),
            # ipc_mode none: no /dev/shm at all (Docker's default is a writable 64 MB tmpfs, a side channel
            # and scratch space past the memory limit); /dev itself stays root's and read-only to the code.
            network_mode="none", read_only=True, ipc_mode="none",
            tmpfs={"/tmp": f"size={limits.tmpfs_mb}m,mode=1777"},
            mem_limit=f"{limits.memory_mb}m", memswap_limit=f"{limits.memory_mb}m",
            pids_limit=limits.pids, nano_cpus=int(limits.cpus * 1e9),
            cap_drop=["ALL"], security_opt=["no-new-privileges"],
            ulimits=[Ulimit(name="fsize", soft=limits.file_mb << 20, hard=limits.file_mb << 20),
                     Ulimit(name="core", soft=0, hard=0),
                     # CPU seconds: a backstop behind the wall clock (a run's timeout, a worker's lifetime).
                     Ulimit(name="cpu", soft=cpu_s, hard=cpu_s)],
            # Bounded logs: a chatty script must not fill the host's disk.
            log_config=LogConfig(type="json-file", config={"max-size": "2m", "max-file": "1"}),
            device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])] if self.gpu else None,
            stdin_open=False, tty=False,
        )

    def _remove(self, container: Any) -> None:
        try:
            container.remove(force=True)
        except Exception as exc:  # already gone, or the engine hiccuped: say so, do not mask the run
            if "No such container" not in str(exc):
                log.warning("could not remove sandbox container %s: %s", container.name, exc)

    def run(self, script: Path, work_dir: Path, args: list[str] | None = None,
            limits: SandboxLimits | None = None, *, env: dict[str, str] | None = None) -> SandboxResult:
        from requests.exceptions import ConnectionError as WaitAborted
        from requests.exceptions import ReadTimeout

        limits = limits or SandboxLimits()
        work, rel = prepare_work_dir(work_dir, script)
        t0 = time.monotonic()
        container = self._create(work, rel, list(args or []), limits, env, worker=False)
        timed_out, pids_failures = False, 0
        try:
            container.start()
            try:
                status = container.wait(timeout=limits.timeout_s)
                code = int(status.get("StatusCode", -1))
            except (ReadTimeout, WaitAborted):  # how the SDK reports a wait past its timeout: still running
                timed_out = True
                pids_failures = _pids_events(container.id)
                container.kill()
                code = int(container.wait(timeout=30).get("StatusCode", 137))
            seconds = time.monotonic() - t0
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
            stdout = tail(container.logs(stdout=True, stderr=False))
            stderr = tail(container.logs(stdout=False, stderr=True))
        except SandboxError:
            raise
        except Exception as exc:
            raise SandboxError(f"docker sandbox failed: {str(exc).splitlines()[0][:200]}") from None
        finally:
            self._remove(container)
        return SandboxResult(
            exit_code=code, stdout=stdout, stderr=stderr, timed_out=timed_out, seconds=round(seconds, 3),
            killed_reason=explain(limits, exit_code=code, output=stdout + stderr, timed_out=timed_out,
                                  oom=oom, pids_hit=pids_failures > 0),
            backend=self.name,
        )

    def start_worker(self, script: Path, work_dir: Path, limits: SandboxLimits | None = None,
                     *, env: dict[str, str] | None = None) -> Worker:
        limits = limits or SandboxLimits()
        _reap(self.client)
        work, rel = prepare_work_dir(work_dir, script)
        container = self._create(work, rel, [], limits, env, worker=True)
        worker = _DockerWorker(self, container, work / SOCKET_NAME)
        try:
            container.start()
        except Exception as exc:
            worker.close()
            raise SandboxError(f"docker worker failed to start: {str(exc).splitlines()[0][:200]}") from None
        worker._wait_ready(limits.timeout_s)
        worker.limit_lifetime(limits.worker_lifetime_s)
        return worker


def _reap(client: Any) -> None:
    """Remove exited workers whose orchestrator died (kill -9) before it could remove them itself."""
    try:
        for container in client.containers.list(all=True, filters={"name": "aa-sandbox-", "status": "exited"}):
            container.remove(force=True)
    except Exception:  # housekeeping only: never the reason a run fails
        pass


class _DockerWorker(Worker):
    def __init__(self, sandbox: DockerSandbox, container: Any, socket_path: Path) -> None:
        super().__init__("docker", socket_path)
        self.sandbox, self.container = sandbox, container

    def exit_code(self) -> int | None:
        try:
            self.container.reload()
        except Exception:
            return 137  # removed behind our back: treat as killed
        state = self.container.attrs.get("State", {})
        return None if state.get("Running") or state.get("Status") == "created" else int(state.get("ExitCode", 137))

    def _log_tail(self) -> str:
        try:
            text = tail(self.container.logs(stdout=True, stderr=True, tail=50))
        except Exception:
            return ""
        if self.container.attrs.get("State", {}).get("OOMKilled"):
            text += "\nmemory limit exceeded (OOM-killed)"
        return text

    def _stop(self) -> None:
        self.sandbox._remove(self.container)
