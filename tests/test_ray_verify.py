"""With --engine ray, the verifier's uncached prompts go to the endpoint from Ray workers, through the
orchestrator's cache and ledger: spread over the workers, at most the configured concurrency in flight,
each distinct prompt asked once, a cached answer never asked again (a real local Ray instance and the
loopback fake endpoint, which counts its answers per prompt)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from autoannotator.config import Settings  # noqa: E402
from autoannotator.engine.ray_engine import ensure_ray  # noqa: E402
from autoannotator.engine.ray_verify import RayAsker, spread_verifier  # noqa: E402
from autoannotator.llm.factory import llm_session  # noqa: E402
from autoannotator.task import LabelDef, TaskSpec  # noqa: E402
from autoannotator.verify.factory import make_verifier  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TASK = TaskSpec(instruction="label these reviews for sentiment", labels=[LabelDef(name="positive"),
                                                                          LabelDef(name="negative")])
CONCURRENCY = 6


@pytest.fixture(scope="module")
def ray_up():
    """One local Ray instance for the module (starting one costs seconds here)."""
    started = not ray.is_initialized()
    yield ensure_ray(None, num_cpus=2)
    if started and ray.is_initialized():
        ray.shutdown()


@pytest.fixture()
def endpoint():
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "_fake_llm.py"), "--latency", "0.2",
                             "--max-concurrency", "100"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    try:
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(10)


def _get(base_url: str, path: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + path, timeout=10) as r:
        return json.loads(r.read())


def test_llm_calls_spread_over_ray_workers_through_one_cache(ray_up, endpoint, tmp_path):
    settings = Settings(llm_base_url=endpoint, llm_model="fake-llm", llm_api_key="unused",
                        llm_max_concurrency=CONCURRENCY)
    texts = [f"review number {i}, quite something" for i in range(30)]
    with llm_session(settings) as llm:
        verifier = make_verifier("llm", TASK, tmp_path, "run-a", settings, llm=llm)
        asker = spread_verifier(verifier, llm, settings, ray_up)
        assert isinstance(asker, RayAsker) and len(asker.workers) == 2  # one per CPU of the instance
        try:
            items = [(i, t) for i, t in enumerate(texts)] + [(99, texts[0])]  # a duplicate in the batch
            first = verifier.verify(items)
            assert [r.label for r in first] == ["positive"] * len(items)
            assert sum(not r.cached for r in first) == len(texts)
            stats = asker.worker_stats()
            assert len({s["pid"] for s in stats}) == 2 and all(s["asked"] > 0 for s in stats), stats
            assert sum(s["asked"] for s in stats) == len(texts)
            ep = _get(endpoint, "/_stats")
            assert ep["answered"] == len(texts)
            assert 2 <= ep["max_in_flight"] <= CONCURRENCY, ep  # concurrent, never past the setting
            # Asked again with new texts: only the new ones reach a worker; the cache answers the rest.
            more = [(100 + i, f"another review {i}") for i in range(5)]
            second = verifier.verify(items + more)
            assert sum(r.cached for r in second) == len(items)
            assert sum(s["asked"] for s in asker.worker_stats()) == len(texts) + 5
        finally:
            asker.close()
        log = _get(endpoint, "/_log")
        assert sorted(log.values()) == [1] * (len(texts) + 5)  # every prompt answered exactly once
        msgs = verifier.messages(texts[3])
        assert log[hashlib.sha256(msgs[-1].content.encode("utf-8")).hexdigest()] == 1
        assert verifier.ledger().calls == len(texts) + 5  # the orchestrator's ledger holds every answer


def test_an_endpoint_down_seen_from_the_workers_ends_the_verify_as_llm_unavailable(ray_up, tmp_path):
    """Retries run on the worker; when they run out, the orchestrator raises what the local engine raises
    (resumable), and a refused connection costs nothing in the ledger."""
    settings = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="x", llm_api_key="unused",
                        llm_max_concurrency=2, llm_max_retries=1)
    with llm_session(settings) as llm:
        verifier = make_verifier("llm", TASK, tmp_path, "run-b", settings, llm=llm)
        asker = spread_verifier(verifier, llm, settings, ray_up)
        try:
            # Unreachable port: transient connection errors until the attempts run out -> LLMUnavailable.
            from autoannotator.errors import LLMUnavailable

            with pytest.raises(LLMUnavailable):
                verifier.verify([(0, "hello")])
        finally:
            asker.close()
    assert verifier.ledger().calls == 0  # a refused connection is never billed


def test_embedded_or_non_llm_verifiers_stay_in_the_orchestrator(ray_up, tmp_path):
    assert spread_verifier(object(), None, Settings(), ray_up) is None
