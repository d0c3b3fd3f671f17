"""Fail before the first LLM call, not after the last: can the run directory and the output be written?

A read-only ``--out`` used to surface as ``internal error: OSError`` once every row had been labelled
and paid for. Checking means really creating a file (permissions alone lie: root, ACLs, read-only
mounts), then removing it; nothing is left behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from autoannotator.errors import UserError


def _probe_dir(directory: Path, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".aa-write-check-", dir=directory)
    except OSError as exc:
        raise UserError(f"cannot write the {what} in {directory}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(name)


def check_run_dir_writable(run_dir: Path) -> None:
    """Create ``run_dir`` if needed and prove a file can be written in it."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from None
    if not run_dir.is_dir():
        raise UserError(f"the run directory {run_dir} is not a directory")
    _probe_dir(run_dir, "run directory")


def check_output_writable(out_path: Path) -> None:
    """The output file's folder must exist (or be creatable) and take a new file; an existing output
    must itself be writable (it is replaced at the end)."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise UserError(f"--out {out_path} is a directory; give a file name")
    parent = out_path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder of --out {out_path}: {exc.strerror or exc}") from None
    _probe_dir(parent, "output")
    if out_path.exists() and not os.access(out_path, os.W_OK):
        raise UserError(f"cannot write --out {out_path}: it exists and is read-only")
