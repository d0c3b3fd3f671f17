"""Work the Ray engine sends to Ray workers, on a real local Ray instance (one per module).

The verifier's uncached prompts go to the endpoint from Ray workers, through the orchestrator's cache and
ledger: spread over the workers, at most the configured concurrency in flight, each distinct prompt asked
once, a cached answer never asked again (the loopback fake endpoint counts its answers per prompt). A
fine-tuning round runs as a Ray task in another process and the model it keeps votes like the one the
same round keeps in this process."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
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


def _untimed(record: dict) -> dict:
    """A round's record without its clock readings and the weights' path (they differ between two runs)."""
    timed = ("seconds", "per_s")
    return {k: _untimed(v) if isinstance(v, dict) else v for k, v in record.items()
            if k != "weights" and not k.endswith(timed)}


def test_a_finetune_round_runs_on_a_ray_worker_and_its_model_votes_here(ray_up, tmp_path):
    from autoannotator.engine.ray_engine import RayEngine
    from autoannotator.finetune import plan_round, round_data, run_round
    from autoannotator.slm.tfidf import TfidfStudent

    with open(REPO / "examples" / "reviews.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] in ("positive", "negative")]
    texts = [r["text"] for r in rows]
    records = [{"row_id": i, "label": r["label"], "label_source": "llm_verified",
                "votes": {"v": {"label": r["label"]}}} for i, r in enumerate(rows)]
    settings = Settings(models=["tfidf"], beta=50)
    plan = plan_round(records, TASK.label_names, settings.finetune, beta=settings.beta, seen_upto=0, round_=1)
    assert plan.train and plan.holdout
    here, rec_here = run_round(TfidfStudent(TASK.label_names), plan, texts.__getitem__, settings.finetune, 1,
                               tmp_path / "here")
    engine = RayEngine([TfidfStudent(TASK.label_names)], ["tfidf"], TASK, settings)
    there, rec_there = engine.train_round(engine.models[0], round_data(plan, texts.__getitem__), settings.finetune,
                                          1, tmp_path / "there")
    assert engine.round_pids and engine.round_pids[0] != os.getpid()  # another process trained it
    assert _untimed(rec_there) == _untimed(rec_here)
    assert rec_there["n_train"] == len(plan.train) > 0
    if rec_there["accepted"]:  # the weights the worker saved are where the record says
        assert Path(rec_there["weights"]).exists() and str(tmp_path / "there") in rec_there["weights"]
    p_there, p_here = there.predict(texts), here.predict(texts)
    assert p_there.votes.tolist() == p_here.votes.tolist()  # (it abstains until a round passes its guard)
    assert np.allclose(p_there.proba, p_here.proba) and np.abs(p_there.proba - 0.5).max() > 0.3  # trained
