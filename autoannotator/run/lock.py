"""One process per run directory: two processes on one run would ask the LLM the same questions
twice and interleave their writes.

``fcntl.flock`` on ``RUN_DIR/lock`` is the lock: the kernel releases it when its holder exits, however
it exits (SIGKILL included), so a lock left by a killed process is simply taken over. The file's
content (holder pid and start time) is only for the message the second process prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from autoannotator.errors import UserError

LOCK_NAME = "lock"


class RunLocked(UserError):
    """Another live process holds the run directory."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    pid, since = info.get("pid"), info.get("started_at")
    return f"process {pid}" + (f" (since {since})" if since else "") if pid else "another process"


class RunLock:
    """``with RunLock(run_dir):`` holds the run for the block; a second holder fails at once."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            # O_CREAT without O_TRUNC: truncating before holding the lock would erase the holder's pid.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot lock the run directory {self.run_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(f"run {self.run_dir} is in use by {_holder(self.path)}; wait for it to finish "
                            f"or stop it, then resume") from None
        except OSError as exc:  # e.g. a file system without flock
            os.close(fd)
            raise UserError(f"cannot lock the run directory {self.run_dir}: {exc.strerror or exc}") from None
        info = {"pid": os.getpid(), "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "monotonic": time.monotonic()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # a stale pid must not be named by a later message
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
