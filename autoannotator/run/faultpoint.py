"""Deterministic crash points for the fault suite: ``AUTOANNOTATOR_FAULT_KILL=WHEN:NODE:N`` makes this
process SIGKILL itself right ``before`` or right ``after`` the N-th run of graph node NODE (after: the
node's own writes are done, its checkpoint is not). Unset (always, outside tests), it costs one dict
lookup per node. SIGKILL, not an exception: no cleanup code runs, as in a real crash or OOM kill."""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "AUTOANNOTATOR_FAULT_KILL"
_seen: Counter[str] = Counter()


def faultpoint(when: str, node: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    want_when, _, rest = spec.partition(":")
    want_node, _, nth = rest.partition(":")
    if (want_when, want_node) != (when, node):
        return
    _seen[f"{when}:{node}"] += 1
    if _seen[f"{when}:{node}"] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
