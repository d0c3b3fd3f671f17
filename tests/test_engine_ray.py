"""The Ray engine on a real local Ray instance gives the local engine's votes for the same models."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from autoannotator.config import Settings  # noqa: E402
from autoannotator.data import open_source  # noqa: E402
from autoannotator.engine import LocalEngine  # noqa: E402
from autoannotator.engine.ray_engine import RayEngine  # noqa: E402
from autoannotator.slm.catalog import build_model  # noqa: E402
from autoannotator.task import LabelDef, build_task  # noqa: E402

pytestmark = pytest.mark.slow
REVIEWS = Path(__file__).resolve().parents[1] / "examples" / "reviews.csv"
SPECS = ["vader", "textblob", "afinn"]


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def setup():
    task = build_task("label these reviews for sentiment", [LabelDef(name="positive"), LabelDef(name="negative"),
                                                             LabelDef(name="neutral")], "text")
    settings = Settings()
    models = [build_model(s, task, settings) for s in SPECS]
    with REVIEWS.open(newline="") as fh:
        base = [row["text"] for row in csv.DictReader(fh)]
    texts = [f"{t} (variant {i})" if i >= len(base) else t for i, t in enumerate((base * 40)[:1200])]
    return task, settings, models, texts


def _same(a, b) -> None:
    assert np.array_equal(a.votes, b.votes)
    assert np.array_equal(a.majority, b.majority)
    assert np.array_equal(a.uncertainty, b.uncertainty)
    assert np.allclose(a.confidence, b.confidence, atol=1e-6)


def test_same_votes_as_local_engine_on_given_texts(ray_instance, setup):
    task, settings, models, texts = setup
    local = LocalEngine(models, len(task.label_names), min_votes=2).ensemble(range(len(texts)), texts)
    engine = RayEngine(models, SPECS, task, settings, min_votes=2, block_rows=400)
    out = engine.ensemble(list(range(len(texts))), texts)
    _same(out, local)
    assert engine.jobs == 1
    assert len(set(local.votes[:, 0].tolist())) > 1  # the data set is not trivially one label


def test_streaming_job_over_a_source_serves_the_loops_batches(ray_instance, setup, tmp_path):
    """Shards on disk, the loop asking batch by batch (skipping empty rows): one job, same votes."""
    task, settings, models, texts = setup
    folder = tmp_path / "shards"
    folder.mkdir()
    texts = list(texts)
    texts[5] = texts[700] = ""  # empty rows: the loop does not ask for them
    for i, lo in enumerate(range(0, len(texts), 500)):
        with open(folder / f"part-{i}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text"])
            w.writerows([t] for t in texts[lo:lo + 500])
    source = open_source(folder, "text")
    assert source.n_rows == len(texts)
    engine = RayEngine(models, SPECS, task, settings, min_votes=2, source=source, block_rows=300)
    local = LocalEngine(models, len(task.label_names), min_votes=2)
    for chunk in source.iter_chunks(0, 64):
        live = [(r, t) for r, t in zip(chunk.row_ids, chunk.texts) if t.strip()]
        ids, batch = [r for r, _ in live], [t for _, t in live]
        _same(engine.ensemble(ids, batch), local.ensemble(ids, batch))
    assert engine.jobs == 1  # one job for the whole run: actors built their models once


def test_resume_mid_data_restarts_the_stream_at_the_cursor(ray_instance, setup, tmp_path):
    task, settings, models, texts = setup
    p = tmp_path / "d.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text"])
        w.writerows([t] for t in texts[:600])
    source = open_source(p, "text")
    engine = RayEngine(models, SPECS, task, settings, min_votes=2, source=source, block_rows=250)
    engine.align_rows = 100  # the loop's shuffle blocks: rows behind the current block mean a new job
    chunk = source.chunk(450, 100)  # a resumed loop starts at its checkpointed cursor
    local = LocalEngine(models, len(task.label_names), min_votes=2).ensemble(chunk.row_ids, chunk.texts)
    _same(engine.ensemble(chunk.row_ids, chunk.texts), local)
    earlier = source.chunk(10, 20)  # a row before the stream's start: a new job from there
    _same(engine.ensemble(earlier.row_ids, earlier.texts),
          LocalEngine(models, len(task.label_names), min_votes=2).ensemble(earlier.row_ids, earlier.texts))
    assert engine.jobs == 2


def test_trainable_models_vote_on_an_actor_with_the_weights_last_shipped(ray_instance, setup):
    """A trainable model's weights change with fine-tuning: the engine ships the loop's current object to
    the model's actor before its next vote, and the votes come from that worker, not this process."""
    import os

    from autoannotator.slm.base import LabelMapping, TrainableSLM

    task, settings, models, texts = setup

    class Fixed(TrainableSLM):
        def __init__(self, label: int):
            super().__init__("fixed", LabelMapping.by_name(task.label_names, task.label_names))
            self.label = label
            self.home = os.getpid()  # built here; it votes its label only when run elsewhere

        def native_proba(self, batch):
            p = np.zeros((len(batch), len(task.label_names)), dtype=np.float32)
            p[:, self.label if os.getpid() != self.home else 2] = 1.0
            return p

        is_trained = True
        train_on = clone = save = load = None  # type: ignore[assignment]

    loop_models = [models[0], Fixed(0)]
    engine = RayEngine(loop_models, ["vader", "student"], task, settings, min_votes=1)
    try:
        assert engine.frozen == [0] and engine.trainable == [1]
        first = engine.ensemble(list(range(50)), texts[:50])
        assert (first.votes[:, 1] == 0).all()
        (pid,) = engine.trainable_pids().values()
        assert pid != os.getpid()
        loop_models[1] = Fixed(1)  # what an accepted fine-tuning round does to the loop's list
        second = engine.ensemble(list(range(50, 100)), texts[50:100])
        assert (second.votes[:, 1] == 1).all()
        assert engine.trainable_pids() == {1: pid}  # the same actor, new weights
    finally:
        engine.close()
    assert engine.trainable_pids() == {}


def test_rows_shuffled_within_blocks_need_one_job(ray_instance, setup, tmp_path):
    """The loop takes rows shuffled within aligned blocks: the stream keeps the block, never restarts."""
    from autoannotator.graphs.annotate import processing_order

    task, settings, models, texts = setup
    p = tmp_path / "d.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text"])
        w.writerows([t] for t in texts)
    source = open_source(p, "text")
    engine = RayEngine(models, SPECS, task, settings, min_votes=2, source=source, block_rows=300)
    engine.align_rows = 500  # blocks smaller than the data, as a large file would have
    order = processing_order(len(texts), 0, True, block_rows=500).tolist()
    local = LocalEngine(models, len(task.label_names), min_votes=2)
    for i in range(0, len(order), 64):
        ids = order[i:i + 64]
        batch = [texts[r] for r in ids]
        _same(engine.ensemble(ids, batch), local.ensemble(ids, batch))
    assert engine.jobs == 1
