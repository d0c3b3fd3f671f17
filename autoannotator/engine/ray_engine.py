"""The ensemble step on Ray: Ray Data ``map_batches`` over one actor pool per frozen model.

Each actor builds its model once, from its spec (the catalog's vetted code, not generated deployment code),
and labels whole blocks of a chunk; the chunks are large (``prefetch_rows``, default 50,000 rows) because
Ray's per-block and per-pool start-up costs dwarf a lexicon model's per-row cost on small chunks. Votes for
rows ahead of the loop's cursor are cached here, so the loop keeps its small batches (the unit of routing,
accepting and fine-tuning, hence of the labels) while Ray sees few, big jobs.

What runs where:
- frozen models (``vader``, ``hf:...``): on Ray actors; neural ones get ``num_gpus`` when the cluster has
  GPUs (a fraction of one GPU per model, so all of them fit on each GPU), CPUs otherwise;
- trainable models (the student): in the orchestrator, in-process, because their weights change with every
  accepted fine-tuning round and the loop checks them against its held-out slice there. Shipping the
  accepted weights to actors is not built.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autoannotator.config import Settings
from autoannotator.ensemble import EnsembleOutput, tally
from autoannotator.errors import UserError
from autoannotator.slm.base import SLM, Prediction, TrainableSLM
from autoannotator.task import TaskSpec

log = logging.getLogger(__name__)

_NEURAL_PREFIXES = ("hf:",)
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError('--engine ray needs Ray: pip install "autoannotator[ray]"') from None
    return ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None,
               object_store_memory: int | None = None) -> Any:
    """Join ``address`` ('auto': the cluster this machine belongs to) or start a local Ray instance.

    Workers must import autoannotator: a local instance passes this checkout on ``PYTHONPATH``; a cluster's
    nodes need it installed (the same version) or started with that ``PYTHONPATH``.
    """
    ray = _ray()
    if ray.is_initialized():
        return ray
    env = {"PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)}
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                              "runtime_env": {"env_vars": env}}
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address!r}: {' '.join(str(exc).split())}") from None
    return ray


class _ModelActor:
    """One model, built once per actor; labels a block and adds its votes and probabilities as columns."""

    def __init__(self, spec: str, task: TaskSpec, settings: Settings, column: int):
        from autoannotator.slm.catalog import build_model

        self.model = build_model(spec, task, settings)
        self.column = column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pred = self.model.predict([str(t) for t in batch["text"]])
        batch[f"v{self.column}"] = pred.votes
        batch[f"p{self.column}"] = pred.proba
        return batch


def _is_neural(spec: str) -> bool:
    return spec.startswith(_NEURAL_PREFIXES)


class RayEngine:
    """Frozen models on Ray actor pools, trainable ones in-process; same votes as ``LocalEngine``."""

    name = "ray"

    def __init__(self, models: list[SLM], specs: Sequence[str], task: TaskSpec, settings: Settings, *,
                 min_votes: int = 1, address: str | None = None, source: Any = None,
                 prefetch_rows: int = 50_000, block_rows: int = 5_000, num_cpus: int | None = None,
                 object_store_memory: int | None = None):
        if len(specs) != len(models):
            raise ValueError("one spec per model")
        self.models = models  # the loop's list: trainable entries are replaced by fine-tuning
        self.specs = list(specs)
        self.task = task
        self.settings = settings
        self.n_labels = len(task.label_names)
        self.min_votes = min_votes
        self.source = source  # a DataSource: lets the engine label rows ahead of the loop in one job
        self.prefetch_rows = max(1, prefetch_rows)
        self.block_rows = max(1, block_rows)
        self.ray = ensure_ray(address, num_cpus, object_store_memory)
        self.frozen = [j for j, m in enumerate(models) if not isinstance(m, TrainableSLM)]
        self._cache_lo = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # column -> (votes, proba) from _cache_lo
        self._cache_n = 0
        self.jobs = 0  # Ray jobs run (one per prefetched chunk): for tests and the benchmark

    # -- resources -------------------------------------------------------------------------------
    def _shapes(self) -> dict[int, dict[str, Any]]:
        """Per frozen model: actors and the CPU/GPU share of each, so that every pool fits at once (Ray Data
        runs the chained pools concurrently; a pool that cannot be placed would stall the job)."""
        res = self.ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
        neural = [j for j in self.frozen if _is_neural(self.specs[j])] if gpus > 0 else []
        cpu_models = [j for j in self.frozen if j not in neural]
        shapes: dict[int, dict[str, Any]] = {}
        if cpu_models:
            actors = max(1, int(cpus // len(cpu_models)))
            share = round(min(1.0, cpus / (len(cpu_models) * actors)) * 0.9, 3)  # leave room for Ray Data's tasks
            for j in cpu_models:
                shapes[j] = {"concurrency": actors, "num_cpus": share, "num_gpus": 0}
        for j in neural:
            shapes[j] = {"concurrency": max(1, int(gpus)), "num_cpus": 0.1, "num_gpus": round(1 / len(neural), 3),
                         "device": "cuda"}
        return shapes

    # -- the Ray job -------------------------------------------------------------------------------
    def _run_frozen(self, texts: Sequence[str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        if not self.frozen or not texts:
            return {j: (np.zeros(0, np.int64), np.zeros((0, self.n_labels), np.float32)) for j in self.frozen}
        ray = self.ray
        n = len(texts)
        shapes = self._shapes()
        n_blocks = max(1, min(math.ceil(n / self.block_rows), 4 * max(s["concurrency"] for s in shapes.values())))
        bounds = np.linspace(0, n, n_blocks + 1).astype(int)
        frame = pd.DataFrame({"_pos": np.arange(n, dtype=np.int64), "text": list(texts)})
        ds = ray.data.from_pandas([frame.iloc[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo])
        for j in self.frozen:
            shape = shapes[j]
            settings = self.settings
            if shape.get("device"):
                settings = settings.model_copy(update={"device": shape["device"]})
            ds = ds.map_batches(_ModelActor, fn_constructor_args=(self.specs[j], self.task, settings, j),
                                batch_format="numpy", batch_size=None, concurrency=shape["concurrency"],
                                num_cpus=shape["num_cpus"], num_gpus=shape["num_gpus"] or None)
        keep = ["_pos"] + [c for j in self.frozen for c in (f"v{j}", f"p{j}")]
        parts: dict[str, list[np.ndarray]] = {c: [] for c in keep}
        for batch in ds.select_columns(keep).iter_batches(batch_format="numpy", batch_size=None):
            for c in keep:
                parts[c].append(np.asarray(batch[c]))
        self.jobs += 1
        cols = {c: np.concatenate(v) for c, v in parts.items()}
        order = np.argsort(cols["_pos"], kind="stable")
        if not np.array_equal(cols["_pos"][order], np.arange(n)):
            raise RuntimeError(f"the Ray job returned {len(order)} rows for {n}")
        return {j: (cols[f"v{j}"][order].astype(np.int64),
                    cols[f"p{j}"][order].reshape(n, self.n_labels).astype(np.float32)) for j in self.frozen}

    def _frozen_for(self, row_ids: Sequence[int], texts: Sequence[str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Votes of the frozen models for these rows: from the cache, else one job over the rows ahead."""
        ids = np.asarray(row_ids, dtype=np.int64)
        lo, hi = self._cache_lo, self._cache_lo + self._cache_n
        if len(ids) and self.source is not None and not (ids.min() >= lo and ids.max() < hi):
            start = int(ids.min())
            n = max(int(ids.max()) - start + 1, self.prefetch_rows)
            chunk = self.source.chunk(start, n)
            ahead = dict(zip(chunk.row_ids, chunk.texts))
            for rid, text in zip(row_ids, texts):
                if ahead.get(rid) != text:
                    raise RuntimeError(f"row {rid}: the loop's text and the data source's differ")
            self._cache = self._run_frozen(chunk.texts)
            self._cache_lo, self._cache_n = start, len(chunk.row_ids)
            lo, hi = start, start + self._cache_n
        if self.source is None or not len(ids):
            return self._run_frozen(texts)
        at = ids - lo
        return {j: (v[at], p[at]) for j, (v, p) in self._cache.items()}

    def ensemble(self, row_ids: Sequence[int], texts: Sequence[str]) -> EnsembleOutput:
        if len(row_ids) != len(texts):
            raise ValueError("one row id per text")
        frozen = self._frozen_for(row_ids, texts)
        preds: list[Prediction] = []
        for j, model in enumerate(self.models):
            if j in frozen:
                votes, proba = frozen[j]
                preds.append(Prediction(votes, proba))
            else:
                preds.append(model.predict(texts))
        n = len(texts)
        if preds:
            votes = np.stack([p.votes for p in preds], axis=1)
            confidence = np.stack([p.confidence for p in preds], axis=1)
        else:
            votes = np.full((n, 0), -1, dtype=np.int64)
            confidence = np.zeros((n, 0), dtype=np.float32)
        majority, uncertainty, n_votes = tally(votes, self.n_labels, self.min_votes)
        return EnsembleOutput(votes, confidence, majority, uncertainty, n_votes)

    def models_changed(self) -> None:
        return None  # trainable models run in-process and are read from the loop's list on every chunk

    def close(self) -> None:
        self._cache = {}
