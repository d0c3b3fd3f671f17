"""The hand-built seccomp filter, applied to a real child process with prctl: what it denies, what it lets run."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from autoannotator.sandbox.seccomp import X86_64_DENIED, filter_program

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter is built for x86_64")

# The child installs the filter on itself (no_new_privs first, as bwrap does), then tries syscalls.
_CHILD = r"""
import ctypes, ctypes.util, errno, json, os, sys, threading
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
prog = open(sys.argv[1], "rb").read()
class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
fprog = SockFprog(len(prog) // 8, prog)
assert libc.prctl(38, 1, 0, 0, 0) == 0                       # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, FILTER
def sys_(nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return ctypes.get_errno() if r == -1 else 0
out = {
  "unshare_user": sys_(272, 0x10000000),
  "unshare_net": sys_(272, 0x40000000),
  "ptrace": sys_(101, 16, os.getppid(), 0, 0),              # PTRACE_ATTACH
  "mount": sys_(165, 0, 0, 0, 0, 0),
  "bpf": sys_(321, 0, 0, 0),
  "clone3": sys_(435, 0, 0),
  "userfaultfd": sys_(323, 0),
}
# What ordinary code does still works: threads, fork, files, subprocess.
t = threading.Thread(target=lambda: None); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
out["fork_status"] = os.waitpid(pid, 0)[1] >> 8
out["getpid_ok"] = os.getpid() > 0
import subprocess
out["subprocess"] = subprocess.run([sys.executable, "-c", "print(6*7)"], capture_output=True, text=True).stdout.strip()
print(json.dumps(out))
"""


def test_filter_denies_escapes_and_allows_ordinary_work(tmp_path):
    prog = filter_program("x86_64")
    assert prog is not None and len(prog) % 8 == 0 and len(prog) // 8 < 4096
    path = tmp_path / "filter.bpf"
    path.write_bytes(prog)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    EPERM, ENOSYS = 1, 38
    assert out["unshare_user"] == EPERM and out["unshare_net"] == EPERM
    assert out["ptrace"] == EPERM and out["mount"] == EPERM and out["bpf"] == EPERM
    assert out["userfaultfd"] == EPERM
    assert out["clone3"] == ENOSYS
    assert out["fork_status"] == 7 and out["getpid_ok"] and out["subprocess"] == "42"


def test_other_machines_get_no_filter():
    assert filter_program("aarch64") is None


def test_denied_table_has_no_duplicates_or_harmless_calls():
    numbers = list(X86_64_DENIED.values())
    assert len(numbers) == len(set(numbers))
    # read/write/openat/mmap/clone/execve/futex must never be in the deny table
    assert not {0, 1, 257, 9, 56, 59, 202} & set(numbers)
