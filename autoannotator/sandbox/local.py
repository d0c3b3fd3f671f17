"""Run generated code as a local subprocess: under bubblewrap when installed, else NOT isolated.

With bubblewrap (``bwrap``): new PID/network/IPC/UTS namespaces (only ``lo`` inside, so no host
service and no internet is reachable), the host file system read-only, ``/root /home /run /mnt
/media /var/tmp`` and the caller's working directory (where ``autoannotator.toml`` and its API
key may sit) hidden under empty tmpfs, ``/tmp`` an empty scratch tmpfs of ``tmpfs_mb``, the
Python installation bound back read-only, the work dir the only writable host path, a clean
environment, and ``--die-with-parent``. Everything else world-readable on the host stays
readable (read-only); Docker shows the code far less (see docker.py).

Who the code runs as: when we are root, bwrap runs without a user namespace (a userns mapping
sandbox uid 65534 to host uid 0 would leave the code owner of every root file, the Docker socket
included) and a tiny launcher inside drops to uid/gid 65534 with all capabilities gone and
no_new_privs set. When we are not root, bwrap puts the code in a user namespace as the caller.

Limits: a fresh cgroup (v1 or v2) when we may create one (root) enforces memory (RSS, no swap),
process count and CPU share exactly. Otherwise only rlimits apply: RLIMIT_AS (virtual memory,
stricter than RSS) and RLIMIT_NPROC (counted per uid, so set to the uid's current tasks plus
``pids``; root ignores it). RLIMIT_FSIZE, RLIMIT_CORE=0 and, for one-shot runs, RLIMIT_CPU
apply always. The wall-clock timeout kills the process group (and the cgroup, and with bwrap
the whole PID namespace, so forked or setsid'd children die too).
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

from autoannotator.sandbox import seccomp
from autoannotator.sandbox.base import (
    SANDBOX_UID,
    SOCKET_NAME,
    Sandbox,
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

# Runs between fork and bwrap: join the cgroups, set rlimits, exec. A separate interpreter
# rather than preexec_fn, which can deadlock in a multi-threaded parent (torch, LangGraph).
_LAUNCH = (
    "import json,os,resource,sys\n"
    "spec=json.loads(sys.argv[1])\n"
    "for p in spec['cgroups']: open(p,'w').write(str(os.getpid()))\n"
    "for n,v in spec['rlimits'].items(): resource.setrlimit(getattr(resource,n),(v,v))\n"
    "if spec.get('cpus'): os.sched_setaffinity(0,spec['cpus'])\n"
    "os.execv(sys.argv[2],sys.argv[2:])\n"
)
# Runs inside bwrap as root, after the mounts are set up: become nobody for good, then enter
# the work dir (which only nobody may enter: bwrap, capability-less by then, cannot).
_DROP = (
    "import ctypes,os,sys\n"
    "libc=ctypes.CDLL(None,use_errno=True)\n"
    # Empty the capability bounding set (PR_CAPBSET_DROP, needs CAP_SETPCAP, which goes with it):
    # nothing exec'd later can regain a capability, not even via a setuid binary.
    "for cap in range(64): libc.prctl(24,cap,0,0,0)\n"
    f"os.setgroups([]);os.setgid({SANDBOX_UID});os.setuid({SANDBOX_UID})\n"
    "os.chdir(sys.argv[1]);os.execv(sys.argv[2],sys.argv[2:])\n"
)
_HIDDEN = ("/root", "/home", "/tmp", "/var/tmp", "/run", "/mnt", "/media")
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/dev", "/proc", "/sys", "/var", "/opt")


class _Cgroup:
    """A fresh cgroup for one sandboxed run: exact memory/pids/CPU limits and kill-everything."""

    def __init__(self, dirs: list[Path], v2: bool) -> None:
        self.dirs, self.v2 = dirs, v2

    @classmethod
    def create(cls, limits: SandboxLimits) -> _Cgroup | None:
        if os.geteuid() != 0:
            return None
        name = f"aa-{uuid.uuid4().hex[:12]}"
        root = Path("/sys/fs/cgroup")
        try:
            if (root / "cgroup.controllers").exists():
                return cls._create_v2(root, name, limits)
            return cls._create_v1(root, name, limits)
        except OSError as exc:
            log.info("no cgroup for the sandbox (%s); rlimits only", exc)
            return None

    @classmethod
    def _create_v1(cls, root: Path, name: str, limits: SandboxLimits) -> _Cgroup | None:
        dirs: list[Path] = []
        try:
            for ctrl in ("memory", "pids", "cpu"):
                if not (root / ctrl / "cgroup.procs").exists():
                    continue
                d = root / ctrl / "autoannotator" / name
                d.mkdir(parents=True)
                dirs.append(d)
                if ctrl == "memory":
                    (d / "memory.limit_in_bytes").write_text(str(limits.memory_mb << 20))
                    if (d / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
                        (d / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_mb << 20))
                elif ctrl == "pids":
                    (d / "pids.max").write_text(str(limits.pids))
                else:
                    (d / "cpu.cfs_period_us").write_text("100000")
                    (d / "cpu.cfs_quota_us").write_text(str(int(limits.cpus * 100000)))
        except OSError:
            cls(dirs, v2=False).remove()
            raise
        return cls(dirs, v2=False) if dirs else None

    @classmethod
    def _create_v2(cls, root: Path, name: str, limits: SandboxLimits) -> _Cgroup | None:
        parent = root / "autoannotator"
        parent.mkdir(exist_ok=True)
        for d in (root, parent):  # delegate the controllers down; each may be refused on its own
            for ctrl in ("memory", "pids", "cpu"):
                try:
                    (d / "cgroup.subtree_control").write_text(f"+{ctrl}")
                except OSError:
                    pass
        d = parent / name
        d.mkdir()
        group = cls([d], v2=True)
        if not (d / "memory.max").exists() and not (d / "pids.max").exists():
            group.remove()
            return None
        try:
            if (d / "memory.max").exists():
                (d / "memory.max").write_text(str(limits.memory_mb << 20))
                if (d / "memory.swap.max").exists():
                    (d / "memory.swap.max").write_text("0")
            if (d / "pids.max").exists():
                (d / "pids.max").write_text(str(limits.pids))
            if (d / "cpu.max").exists():
                (d / "cpu.max").write_text(f"{int(limits.cpus * 100000)} 100000")
        except OSError:
            group.remove()
            raise
        return group

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def has(self, filename: str) -> bool:
        return any((d / filename).exists() for d in self.dirs)

    def _counter(self, filename: str, key: str) -> int:
        for d in self.dirs:
            try:
                for line in (d / filename).read_text().splitlines():
                    k, _, v = line.partition(" ")
                    if k == key:
                        return int(v)
            except (OSError, ValueError):
                pass
        return 0

    def oom_killed(self) -> bool:
        return self._counter("memory.events" if self.v2 else "memory.oom_control", "oom_kill") > 0

    def pids_hit(self) -> bool:
        return self._counter("pids.events", "max") > 0

    def kill_all(self) -> None:
        for d in self.dirs:
            if self.v2 and (d / "cgroup.kill").exists():
                (d / "cgroup.kill").write_text("1")
                continue
            for _ in range(3):  # a task may fork while we sweep; sweep again
                try:
                    pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(100):  # rmdir fails until the killed tasks are gone
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def _uid_tasks(uid: int) -> int:
    """Tasks (threads) the uid runs now: RLIMIT_NPROC counts them all, not just ours."""
    count = 0
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in Path(status).read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            pass
    return count


def _safe_to_hide(path: Path) -> bool:
    """Hiding the caller's cwd must not hide the system (cwd = / or /usr would break everything)."""
    s = str(path)
    if s == "/" or any(sysdir == s or sysdir.startswith(s + "/") or s.startswith(sysdir + "/")
                       for sysdir in _SYSTEM):
        return False
    return True


def _mkdirs_under(path: Path, hidden: list[Path]) -> list[str]:
    """bwrap creates mount points in a tmpfs as 0700; make them traversable for uid 65534."""
    args: list[str] = []
    for ancestor in reversed(path.parents):
        if any(ancestor != h and ancestor.is_relative_to(h) for h in hidden):
            args += ["--perms", "0755", "--dir", str(ancestor)]
    return args


@functools.cache
def _bwrap_has_size() -> bool:
    """bwrap >= 0.8 can bound a tmpfs (--size)."""
    try:
        return "--size" in subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def _bwrap_problem(ns_flags: tuple[str, ...]) -> str | None:
    """None if bwrap can start a sandbox here, else why not (e.g. user namespaces disabled)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed"
    try:
        proc = subprocess.run([exe, *ns_flags, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "true"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap failed to start: {exc}"
    if proc.returncode != 0:
        return f"bwrap cannot create a sandbox here: {proc.stderr.strip()[:200]}"
    return None


def _cpu_set(cpus: float) -> list[int]:
    """The cores a sandboxed process may run on: ceil(cpus) of ours. With no cgroup (not root) this is
    the CPU cap; with one, cpu.max also enforces fractions."""
    try:
        mine = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []
    return mine[:max(1, math.ceil(cpus))] if mine else []


_Spawned = tuple[subprocess.Popen, "_Cgroup | None", IO, IO, Path]  # process, cgroup, stdout, stderr, work dir


class LocalSandbox(Sandbox):
    name = "local"

    def __init__(self, *, gpu: bool = False, hide: list[Path] | None = None, use_bwrap: bool = True,
                 vetted_only: bool = False) -> None:
        """``use_bwrap=False`` runs code NOT isolated: only for ``--sandbox unsafe-local`` (the user's
        explicit choice) or with ``vetted_only`` (the program's own templates, never LLM-written code)."""
        self.gpu = gpu
        self.as_root = drops_to_nobody()
        # Root: no user namespace (see the module docstring); the rest of --unshare-all.
        self.ns_flags: tuple[str, ...] = (
            ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try")
            if self.as_root else ("--unshare-all",)
        )
        self.isolation_problem = _bwrap_problem(self.ns_flags) if use_bwrap else "bubblewrap disabled by the caller"
        self.isolated = self.isolation_problem is None
        self.runs_generated_code = self.isolated or not vetted_only
        self.name = "local" if self.isolated else ("vetted-only" if vetted_only else "unsafe-local")
        hidden = [Path(h) for h in _HIDDEN] + [Path(h).resolve() for h in (hide or [])]
        cwd = Path.cwd().resolve()
        if _safe_to_hide(cwd):
            hidden.append(cwd)
        existing = [h for h in hidden if h.is_dir() and not h.is_symlink()]
        # Drop any hidden dir inside another: the outer tmpfs hides it already.
        self.hidden = sorted({h for h in existing if not any(h != o and h.is_relative_to(o) for o in existing)})
        if not self.isolated:  # only reached by an explicit --sandbox unsafe-local (see get_sandbox)
            log.info("unsafe-local sandbox: generated code runs NOT isolated (%s)", self.isolation_problem)

    def _readable(self) -> list[Path]:
        """The Python installation (interpreter and venv), bound back on top of hidden dirs."""
        paths = {Path(os.path.realpath(p)) for p in (sys.base_prefix, sys.prefix)}
        paths |= {Path(sys.prefix), Path(os.path.realpath(sys.executable)).parent}
        paths = {p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths)}  # outermost only
        return sorted(p for p in paths if any(p.is_relative_to(h) for h in self.hidden))

    def _argv(self, work: Path, rel: str, args: list[str], limits: SandboxLimits,
              env: dict[str, str], cgroup: _Cgroup | None, one_shot: bool,
              seccomp_fd: int | None = None) -> list[str]:
        py = sys.executable
        rlimits = {
            "RLIMIT_FSIZE": limits.file_mb << 20,
            "RLIMIT_CORE": 0,
            "RLIMIT_NPROC": _uid_tasks(SANDBOX_UID if self.as_root else os.getuid()) + limits.pids,
        }
        if cgroup is None or not cgroup.has("memory.limit_in_bytes" if not cgroup.v2 else "memory.max"):
            rlimits["RLIMIT_AS"] = limits.memory_mb << 20
        # A backstop behind the wall clock: a one-shot run's timeout, a worker's lifetime.
        wall = limits.timeout_s if one_shot else limits.worker_lifetime_s
        rlimits["RLIMIT_CPU"] = math.ceil(wall * max(1.0, limits.cpus)) + 1
        spec = json.dumps({"cgroups": cgroup.procs_files if cgroup else [], "rlimits": rlimits,
                           "cpus": _cpu_set(limits.cpus)})
        launch = [py, "-I", "-S", "-c", _LAUNCH, spec]
        target = [py, f"{work}/{rel}", *args]
        if not self.isolated:
            return launch + target
        bw = [shutil.which("bwrap") or "bwrap", *self.ns_flags, "--die-with-parent", "--new-session",
              "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        if seccomp_fd is not None:
            bw += ["--seccomp", str(seccomp_fd)]
        for h in self.hidden:
            scratch = h == Path("/tmp")  # the code's scratch space; the other tmpfs only hold mount points
            if _bwrap_has_size():
                bw += ["--size", str(limits.tmpfs_mb << 20 if scratch else 1 << 20)]
            bw += ["--perms", "1777" if scratch else "0755", "--tmpfs", str(h)]
        for p in self._readable():
            bw += [*_mkdirs_under(p, self.hidden), "--ro-bind", str(p), str(p)]
        if self.gpu:
            for dev in sorted(glob.glob("/dev/nvidia*")):
                bw += ["--dev-bind", dev, dev]
        bw += [*_mkdirs_under(work, self.hidden), "--bind", str(work), str(work),
               "--chdir", "/" if self.as_root else str(work), "--clearenv"]
        for k, v in env.items():
            bw += ["--setenv", k, v]
        if self.as_root:  # only what the drop to nobody needs; all gone, bounding set included, after it
            bw += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                   "--cap-add", "CAP_SETPCAP", "--", py, "-I", "-S", "-c", _DROP, str(work)]
        else:  # inside its user namespace: an empty bounding set
            bw += ["--cap-drop", "ALL", "--"]
        return launch + bw + target

    def _spawn(self, script: Path, work_dir: Path, args: list[str], limits: SandboxLimits,
               extra_env: dict[str, str] | None, one_shot: bool) -> _Spawned:
        work, rel = prepare_work_dir(work_dir, script)
        env = sandbox_env(str(work), threads_for(limits), extra_env)
        if not one_shot:
            env.update(self.worker_env(str(work)))
        env["PATH"] = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
        cgroup = _Cgroup.create(limits)
        # Output goes to host temp files: outside the sandbox's view, and no pipe to keep drained.
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        program = seccomp.filter_program() if self.isolated else None
        bpf = tempfile.TemporaryFile() if program is not None else None
        try:
            if bpf is not None:
                bpf.write(program)
                bpf.flush()
                bpf.seek(0)
            fds = (bpf.fileno(),) if bpf is not None else ()
            argv = self._argv(work, rel, args, limits, env, cgroup, one_shot, fds[0] if fds else None)
            # Without bwrap, env is all the child gets; with bwrap, --clearenv sets it inside.
            proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, pass_fds=fds)
        except BaseException:
            out.close()
            err.close()
            if cgroup:
                cgroup.remove()
            raise
        finally:
            if bpf is not None:  # bwrap has read it (or holds its own copy of the descriptor)
                bpf.close()
        return proc, cgroup, out, err, work

    def run(self, script: Path, work_dir: Path, args: list[str] | None = None,
            limits: SandboxLimits | None = None, *, env: dict[str, str] | None = None) -> SandboxResult:
        limits = limits or SandboxLimits()
        t0 = time.monotonic()
        proc, cgroup, out, err, _ = self._spawn(script, work_dir, list(args or []), limits, env, one_shot=True)
        timed_out = False
        try:
            proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            oom = cgroup.oom_killed() if cgroup else False
            pids_hit = cgroup.pids_hit() if cgroup else False
            _kill_tree(proc, cgroup)
        seconds = time.monotonic() - t0
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        stdout, stderr = _read_tail(out), _read_tail(err)
        return SandboxResult(
            exit_code=code, stdout=stdout, stderr=stderr, timed_out=timed_out, seconds=round(seconds, 3),
            killed_reason=explain(limits, exit_code=code, output=stdout + stderr, timed_out=timed_out,
                                  oom=oom, pids_hit=pids_hit),
            backend=self.name,
        )

    def start_worker(self, script: Path, work_dir: Path, limits: SandboxLimits | None = None,
                     *, env: dict[str, str] | None = None) -> Worker:
        limits = limits or SandboxLimits()
        proc, cgroup, out, err, work = self._spawn(script, work_dir, [], limits, env, one_shot=False)
        worker = _LocalWorker(proc, cgroup, out, err, work / SOCKET_NAME)
        worker._wait_ready(limits.timeout_s)
        worker.limit_lifetime(limits.worker_lifetime_s)
        return worker


def _kill_tree(proc: subprocess.Popen, cgroup: _Cgroup | None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass
    if cgroup:
        cgroup.kill_all()
    proc.wait()
    if cgroup:
        cgroup.remove()


def _read_tail(f: IO, n_bytes: int = 32_000) -> str:
    try:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - n_bytes))
        return tail(f.read())
    finally:
        f.close()


class _LocalWorker(Worker):
    def __init__(self, proc: subprocess.Popen, cgroup: _Cgroup | None, out: IO, err: IO, socket_path: Path) -> None:
        super().__init__("local", socket_path)
        self.proc, self.cgroup, self.out, self.err = proc, cgroup, out, err

    def exit_code(self) -> int | None:
        rc = self.proc.poll()
        return None if rc is None else (rc if rc >= 0 else 128 - rc)

    def _log_tail(self) -> str:
        try:
            self.err.seek(0, os.SEEK_END)
            self.err.seek(max(0, self.err.tell() - 8000))
            return tail(self.err.read())
        except (OSError, ValueError):
            return ""

    def _stop(self) -> None:
        try:
            _kill_tree(self.proc, self.cgroup)
        finally:
            self.out.close()
            self.err.close()
