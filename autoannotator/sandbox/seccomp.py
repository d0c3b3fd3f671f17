"""A seccomp filter for bubblewrap (``bwrap --seccomp FD``): the syscalls that let code escape or
attack the kernel fail with EPERM, everything else is allowed (a deny-list, like Docker's default
profile in spirit, much shorter).

Denied: new namespaces (``unshare``, ``setns``, ``clone``/``clone3`` with namespace flags), mounts and
``pivot_root``/``chroot``, ``ptrace`` and cross-process memory access, kernel modules and ``kexec``,
the keyring, ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring``, file handles by number
(``open_by_handle_at``), ``reboot``, swap, host name, ``acct``, ``quotactl``, port I/O. Foreign
syscall ABIs (i386 ``int 0x80``, x32) kill the process: they would bypass the table.

Built by hand as classic BPF (no libseccomp binding is needed). x86_64 only: elsewhere
``filter_program()`` returns None and the sandbox says it runs without a seccomp filter.
"""

from __future__ import annotations

import errno
import platform
import struct

# BPF opcodes (linux/filter.h, linux/bpf_common.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
# seccomp return values and the seccomp_data layout (nr @0, arch @4, args @16 + 8*i, little endian).
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80

X86_64_DENIED: dict[str, int] = {
    "ptrace": 101, "vhangup": 153, "pivot_root": 155, "chroot": 161, "acct": 163,
    "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170,
    "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176,
    "quotactl": 179, "lookup_dcookie": 212, "kexec_load": 246, "add_key": 248, "request_key": 249,
    "keyctl": 250, "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
    "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
}
X86_64_CLONE, X86_64_CLONE3 = 56, 435


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _x86_64_program() -> bytes:
    eperm = _RET_ERRNO | errno.EPERM
    prog = [
        _insn(_LD_W_ABS, 0, 0, _OFF_ARCH),
        _insn(_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, _RET_KILL_PROCESS),
        _insn(_LD_W_ABS, 0, 0, _OFF_NR),
        _insn(_JGE_K, 0, 1, _X32_BIT),
        _insn(_RET_K, 0, 0, _RET_KILL_PROCESS),
    ]
    for nr in sorted(set(X86_64_DENIED.values())):  # match -> fall through to EPERM, else skip it
        prog += [_insn(_JEQ_K, 0, 1, nr), _insn(_RET_K, 0, 0, eperm)]
    # clone3 passes its flags in memory BPF cannot read: ENOSYS makes libc fall back to clone(2).
    prog += [_insn(_JEQ_K, 0, 1, X86_64_CLONE3), _insn(_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    # clone(2) with a namespace flag in its first argument (low 32 bits): EPERM; threads/forks pass.
    prog += [
        _insn(_JEQ_K, 0, 4, X86_64_CLONE),
        _insn(_LD_W_ABS, 0, 0, _OFF_ARG0),
        _insn(_JSET_K, 0, 1, CLONE_NS_FLAGS),
        _insn(_RET_K, 0, 0, eperm),
        _insn(_RET_K, 0, 0, _RET_ALLOW),
        _insn(_RET_K, 0, 0, _RET_ALLOW),
    ]
    return b"".join(prog)


def filter_program(machine: str | None = None) -> bytes | None:
    """The compiled filter (an array of ``struct sock_filter``) for this machine, or None if unsupported."""
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        return _x86_64_program()
    return None
