"""A two-node Ray cluster on this machine (loopback only): the Ray engine joins it and gives the local votes.

The nodes are started by this test (``ray start --block``, each in its own session) and stopped by killing
those process groups only: never ``ray stop``, which would stop every Ray process on the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            # the group may outlive its leader: make sure nothing of it is left
            os.killpg(proc.pid, signal.SIGKILL)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue
        return


@pytest.fixture(scope="module")
def cluster():
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="aar-", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}  # loopback only, and no shared token file
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=150000000",
              "--disable-usage-stats"]
    procs = [subprocess.Popen([str(RAY), "start", "--head", f"--port={port}", "--include-dashboard=false",
                               f"--temp-dir={temp}", *common], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        else:
            pytest.fail("the head node did not open its port")
        procs.append(subprocess.Popen([str(RAY), "start", f"--address=127.0.0.1:{port}", *common], env=env,
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield f"127.0.0.1:{port}", env
    finally:
        for proc in reversed(procs):
            _stop(proc)


DRIVER = textwrap.dedent("""
    import csv, sys, time
    import numpy as np
    from autoannotator.config import Settings
    from autoannotator.engine import LocalEngine
    from autoannotator.engine.ray_engine import RayEngine, ensure_ray
    from autoannotator.slm.catalog import build_model
    from autoannotator.task import LabelDef, build_task

    ray = ensure_ray(sys.argv[1])
    deadline = time.time() + 120
    while sum(n["Alive"] for n in ray.nodes()) < 2 and time.time() < deadline:
        time.sleep(1)
    task = build_task("sentiment", [LabelDef(name="positive"), LabelDef(name="negative")], "text")
    settings = Settings()
    specs = ["vader", "afinn"]
    models = [build_model(s, task, settings) for s in specs]
    with open(sys.argv[2], newline="") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)] * 3
    ids = list(range(len(texts)))
    a = LocalEngine(models, 2, 1).ensemble(ids, texts)
    b = RayEngine(models, specs, task, settings, min_votes=1, block_rows=100).ensemble(ids, texts)
    same = np.array_equal(a.votes, b.votes) and np.array_equal(a.uncertainty, b.uncertainty)
    print("NODES", sum(n["Alive"] for n in ray.nodes()), "SAME", same, "ROWS", len(texts))
""")


def test_two_node_cluster_same_votes(cluster):
    address, env = cluster
    proc = subprocess.run([sys.executable, "-c", DRIVER, address, str(REPO / "examples" / "reviews.csv")],
                          env=env, capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("NODES")), "")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert line.split()[:4] == ["NODES", "2", "SAME", "True"], line
