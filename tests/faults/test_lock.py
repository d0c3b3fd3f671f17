"""RunLock with real processes: a second holder fails at once naming the first; a killed holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoannotator.errors import UserError
from autoannotator.run.lock import RunLock, RunLocked

ROOT = Path(__file__).resolve().parents[2]
_HOLD = ("import sys,time\n"
         "from autoannotator.run.lock import RunLock\n"
         "with RunLock(sys.argv[1]):\n"
         "    print('HELD', flush=True)\n"
         "    time.sleep(60)\n")


def _holder(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "HELD"
    return proc


def test_second_process_fails_at_once_naming_the_holder(tmp_path):
    proc = _holder(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(RunLocked) as info:
            RunLock(tmp_path).acquire()
        assert time.monotonic() - start < 1.0
        msg = str(info.value)
        assert f"process {proc.pid}" in msg and "\n" not in msg and str(tmp_path) in msg
        assert isinstance(info.value, UserError)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_lock_of_a_killed_process_is_taken_over(tmp_path, sig):
    proc = _holder(tmp_path)
    proc.send_signal(sig)
    proc.wait()
    assert (tmp_path / "lock").exists()  # the file stays; the kernel dropped the flock
    with RunLock(tmp_path) as lock:
        assert lock.held
        assert str(os.getpid()) in (tmp_path / "lock").read_text()


def test_released_lock_can_be_taken_again_and_names_nobody_stale(tmp_path):
    with RunLock(tmp_path):
        pass
    assert (tmp_path / "lock").read_text() == ""
    with RunLock(tmp_path) as again:
        assert again.held
    assert not again.held


def test_same_process_second_lock_is_refused(tmp_path):
    # flock locks belong to open file descriptions: a second open in one process conflicts too,
    # so a nested resume inside one process is caught as well.
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match=f"process {os.getpid()}"):
            RunLock(tmp_path).acquire()


def test_unwritable_run_dir_is_a_user_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot lock"):
            RunLock(tmp_path).acquire()
    finally:
        tmp_path.chmod(0o700)
