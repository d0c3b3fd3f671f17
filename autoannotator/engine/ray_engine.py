"""The ensemble step on Ray: Ray Data ``map_batches`` over one actor pool per frozen model.

Each actor builds its model once, from its spec (the catalog's vetted code, not generated deployment code).
With a ``DataSource`` the engine runs ONE streaming job per run, from the loop's cursor to the end of the
data: Ray read tasks stream the shards with the loop's own reader in blocks of ``block_rows`` (default 5,000:
Ray's per-block cost dwarfs a lexicon model's per-row cost on small blocks), the actor pools label them, and
the votes come back in row order a bounded distance ahead of the loop. The loop keeps its small batches (the
unit of routing, accepting and fine-tuning, hence of the labels) while Ray sees one big job and the actors
load their models once per run, not once per batch.

What runs where:
- frozen models (``vader``, ``hf:...``): on Ray actors; neural ones get ``num_gpus`` when the cluster has
  GPUs (a fraction of one GPU per model, so all of them fit on each GPU), CPUs otherwise;
- trainable models (the student): each votes on a Ray actor of its own (a share of a GPU when the cluster
  has GPUs), asked per batch of the loop: the loop's batches are the unit of fine-tuning, so these votes
  cannot run ahead in the streaming job. The request goes out before the frozen votes are pulled, so the
  actor works while the orchestrator waits on the stream. Their fine-tuning round
  (``finetune.train_round``: training, the held-out guard, saving the weights) runs as a Ray task; the
  model it keeps travels back to the orchestrator (the loop's list holds it) and from there to the actor,
  before the actor's next vote: Ray runs one caller's calls to an actor in the order they were sent. The
  task gets the round's texts with it (not the data), and writes the weights under the run directory: on
  a cluster that directory must be on a filesystem the workers share. A model built on the orchestrator's
  device keeps it: with an orchestrator without a GPU, the actor votes on its CPU.
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
from autoannotator.data import DEFAULT_CHUNK_ROWS
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
            # "local": a new instance, even when a `ray start` cluster runs on this machine (plain init joins it)
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory, **kwargs)
        else:
            host = address.removeprefix("ray://").rsplit(":", 1)[0]
            if host in ("127.0.0.1", "localhost"):  # a loopback cluster: this driver is on its node, not on
                kwargs["_node_ip_address"] = "127.0.0.1"  # the machine's outward address
            ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address!r}: {' '.join(str(exc).split())}") from None
    return ray


class _ModelActor:
    """One model, built once per actor; labels a block and adds its votes and probabilities as columns."""

    def __init__(self, spec: str, task: TaskSpec, settings: Settings, column: int, last: bool):
        from autoannotator.slm.catalog import build_model

        self.model = build_model(spec, task, settings)
        self.column = column
        self.last = last  # the last pool drops the texts: only votes travel back to the orchestrator

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pred = self.model.predict([str(t) for t in batch["text"]])
        out = {k: v for k, v in batch.items() if not (self.last and k == "text")}
        out[f"v{self.column}"] = pred.votes
        out[f"p{self.column}"] = pred.proba
        return out


class _TrainableActor:
    """A trainable model voting on a Ray worker, with the weights last shipped to it."""

    def __init__(self, model: SLM):
        self.model = model

    def set_model(self, model: SLM) -> None:
        self.model = model

    def predict(self, texts: list[str]) -> Prediction:
        return self.model.predict(texts)

    def pid(self) -> int:
        return os.getpid()


def _quiet_ray_data(ray: Any) -> None:
    """No progress bars or per-job banners on the user's terminal: the CLI has its own progress."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _datasource_class() -> type:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class SourceDatasource(Datasource):
        """The loop's own reader (``DataSource``) as Ray read tasks: one per shard, streaming blocks of
        ``block_rows`` with their row ids, so Ray sees exactly the rows and texts the loop does."""

        def __init__(self, source: Any, start: int, block_rows: int):
            super().__init__()
            self.source, self.start, self.block_rows = source, start, block_rows

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list:
            tasks = []
            for shard in self.source.shards:
                if shard.first_row + shard.n_rows <= self.start:
                    continue
                skip = max(self.start - shard.first_row, 0)
                tasks.append(ReadTask(_shard_reader(self.source, shard, skip, self.block_rows),
                                      BlockMetadata(num_rows=shard.n_rows - skip, size_bytes=None, exec_stats=None,
                                                    input_files=(str(shard.path),))))
            return tasks

    return SourceDatasource


def _shard_reader(source: Any, shard: Any, skip: int, block_rows: int):
    def read() -> Any:
        from autoannotator.data import _shard_frames

        rid = shard.first_row + skip
        for frame in _shard_frames(shard, block_rows, skip):
            ids = list(range(rid, rid + len(frame)))
            chunk = source._chunk_of(ids, frame.reindex(columns=source.columns))
            rid += len(frame)
            yield pd.DataFrame({"_rid": np.asarray(ids, dtype=np.int64), "text": chunk.texts})

    return read


def _round_on_worker(model: Any, data: Any, cfg: Any, round_: int, save_dir: str) -> tuple[Any, dict, int]:
    """``finetune.train_round`` on a Ray worker; returns (the model kept, the round's record, the worker's pid)."""
    from autoannotator.finetune import train_round

    kept, record = train_round(model, data, cfg, round_, Path(save_dir))
    return kept, record, os.getpid()


def _SourceDatasource(source: Any, start: int, block_rows: int) -> Any:
    return _datasource_class()(source, start, block_rows)


def _is_neural(spec: str) -> bool:
    return spec.startswith(_NEURAL_PREFIXES)


class RayEngine:
    """Frozen models on Ray actor pools, trainable ones on an actor each; same votes as ``LocalEngine``."""

    name = "ray"

    def __init__(self, models: list[SLM], specs: Sequence[str], task: TaskSpec, settings: Settings, *,
                 min_votes: int = 1, address: str | None = None, source: Any = None,
                 block_rows: int = 5_000, num_cpus: int | None = None,
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
        self.block_rows = max(1, block_rows)
        self.align_rows = DEFAULT_CHUNK_ROWS  # the loop's shuffle blocks (and the reader's windows)
        self.ray = ensure_ray(address, num_cpus, object_store_memory)
        self.frozen = [j for j, m in enumerate(models) if not isinstance(m, TrainableSLM)]
        self.trainable = [j for j in range(len(models)) if j not in self.frozen]
        self._actors: dict[int, Any] = {}  # trainable model index -> its voting actor
        self._shipped: dict[int, SLM] = {}  # the model object each actor holds
        self._stream: Any = None  # the streaming job's batch iterator
        self._buf: dict[str, np.ndarray] | None = None  # its rows not yet handed to the loop
        self._buf_lo = 0
        self.jobs = 0  # Ray jobs started: one per run (or per restart) with a data source
        self.round_pids: list[int] = []  # the worker process of each fine-tuning round

    # -- resources -------------------------------------------------------------------------------
    def _shapes(self) -> dict[int, dict[str, Any]]:
        """Per frozen model: actors and the CPU/GPU share of each, so that every pool fits at once (Ray Data
        runs the chained pools concurrently; a pool that cannot be placed would stall the job)."""
        res = self.ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
        node_cpus = [float(n["Resources"].get("CPU", 0.0)) for n in self.ray.nodes()
                     if n.get("Alive") and n["Resources"].get("CPU", 0.0) > 0] or [cpus]
        neural = [j for j in self.frozen if _is_neural(self.specs[j])] if gpus > 0 else []
        gpu_share = round(1 / (len(neural) + len(self.trainable)), 3) if gpus > 0 else 0.0
        cpu_models = [j for j in self.frozen if j not in neural]
        shapes: dict[int, dict[str, Any]] = {}
        if cpu_models:
            actors = max(1, int(cpus // len(cpu_models)))
            # Sized so that the actors pack onto the nodes (the smallest node taking its even share), with
            # room left for Ray Data's own read tasks.
            per_node = math.ceil(actors * len(cpu_models) / len(node_cpus))
            share = round(min(1.0, min(node_cpus) / per_node) * 0.85, 3)
            for j in cpu_models:
                shapes[j] = {"concurrency": actors, "num_cpus": share, "num_gpus": 0}
        for j in neural:
            shapes[j] = {"concurrency": max(1, int(gpus)), "num_cpus": 0.1, "num_gpus": gpu_share, "device": "cuda"}
        for j in self.trainable:  # one actor each; no CPU share: the loop waits on its votes anyway
            shapes[j] = {"concurrency": 1, "num_cpus": 0, "num_gpus": gpu_share}
        return shapes

    # -- the Ray jobs ------------------------------------------------------------------------------
    def _pipeline(self, ds: Any) -> Any:
        """``ds`` (``_rid``, ``text``) through one actor pool per frozen model; keeps ``_rid`` and the votes."""
        shapes = self._shapes()
        for n, j in enumerate(self.frozen):
            shape = shapes[j]
            settings = self.settings
            if shape.get("device"):
                settings = settings.model_copy(update={"device": shape["device"]})
            last = n == len(self.frozen) - 1
            ds = ds.map_batches(_ModelActor, fn_constructor_args=(self.specs[j], self.task, settings, j, last),
                                batch_format="numpy", batch_size=None,
                                compute=self.ray.data.ActorPoolStrategy(size=shape["concurrency"]),
                                num_cpus=shape["num_cpus"], num_gpus=shape["num_gpus"] or None)
        return ds

    def _columns(self, batches: Any, n: int | None = None) -> dict[str, np.ndarray]:
        keep = ["_rid"] + [c for j in self.frozen for c in (f"v{j}", f"p{j}")]
        parts: dict[str, list[np.ndarray]] = {c: [] for c in keep}
        for batch in batches:
            for c in keep:
                parts[c].append(np.asarray(batch[c]))
        return {c: np.concatenate(v) if v else np.zeros(0) for c, v in parts.items()}

    def _run_frozen(self, texts: Sequence[str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """One job over these texts (no data source: the texts travel from this process)."""
        if not self.frozen or not texts:
            return {j: (np.zeros(0, np.int64), np.zeros((0, self.n_labels), np.float32)) for j in self.frozen}
        _quiet_ray_data(self.ray)
        n = len(texts)
        n_blocks = max(1, math.ceil(n / self.block_rows))
        bounds = np.linspace(0, n, n_blocks + 1).astype(int)
        frame = pd.DataFrame({"_rid": np.arange(n, dtype=np.int64), "text": list(texts)})
        ds = self._pipeline(self.ray.data.from_pandas([frame.iloc[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])
                                                       if hi > lo]))
        cols = self._columns(ds.iter_batches(batch_format="numpy", batch_size=None))
        self.jobs += 1
        order = np.argsort(cols["_rid"], kind="stable")
        if not np.array_equal(cols["_rid"][order], np.arange(n)):
            raise RuntimeError(f"the Ray job returned {len(order)} rows for {n}")
        return {j: (cols[f"v{j}"][order].astype(np.int64),
                    cols[f"p{j}"][order].reshape(n, self.n_labels).astype(np.float32)) for j in self.frozen}

    def _start_stream(self, start: int) -> None:
        """One job from row ``start`` to the end of the data: the actors live (and hold their models) for the
        whole run; Ray Data's backpressure keeps it a bounded distance ahead of the loop."""
        from ray.data import DataContext

        _quiet_ray_data(self.ray)
        DataContext.get_current().execution_options.preserve_order = True  # rows come back in row-id order
        ds = self._pipeline(self.ray.data.read_datasource(_SourceDatasource(self.source, start, self.block_rows),
                                                          num_cpus=0.1))
        self._stream = iter(ds.iter_batches(batch_format="numpy", batch_size=None))
        self._buf = None
        self._buf_lo = start
        self.jobs += 1

    def _pull(self) -> None:
        try:
            batch = next(self._stream)
        except StopIteration:
            raise RuntimeError("the Ray job ended before the rows the loop asked for") from None
        cols = self._columns([batch])
        if self._buf is None or not len(self._buf["_rid"]):
            self._buf = cols
        else:
            self._buf = {c: np.concatenate([self._buf[c], cols[c]]) for c in cols}

    def _frozen_for(self, row_ids: Sequence[int], texts: Sequence[str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The frozen models' votes for these rows: from the streaming job over the data source (started, or
        restarted, at the first row asked for), else one job over the given texts."""
        if self.source is None or not len(row_ids) or not self.frozen:
            return self._run_frozen(texts)
        ids = np.asarray(row_ids, dtype=np.int64)
        lo, hi = int(ids.min()), int(ids.max())
        # The loop takes rows shuffled within aligned blocks (graphs/annotate.py processing_order): keep the
        # whole current block, drop only the blocks behind it, restart only for a row before what is kept.
        floor = lo - lo % self.align_rows
        if self._stream is None or lo < self._buf_lo:
            self._start_stream(floor)
        if self._buf is not None and len(self._buf["_rid"]):
            keep = self._buf["_rid"] >= floor
            self._buf = {c: v[keep] for c, v in self._buf.items()}
        self._buf_lo = max(self._buf_lo, floor)
        while self._buf is None or not len(self._buf["_rid"]) or int(self._buf["_rid"][-1]) < hi:
            self._pull()
        first = int(self._buf["_rid"][0])
        at = ids - first
        if at.min() < 0 or not np.array_equal(self._buf["_rid"][at], ids):
            raise RuntimeError(f"the Ray job's rows do not line up with the loop's at row {lo}")
        n = len(ids)
        return {j: (self._buf[f"v{j}"][at].astype(np.int64),
                    self._buf[f"p{j}"][at].reshape(n, self.n_labels).astype(np.float32)) for j in self.frozen}

    def _trainable_votes(self, texts: Sequence[str]) -> dict[int, Any]:
        """Ask each trainable model's actor for its votes (object refs); a model the loop has replaced since
        (an accepted round, a resume) is shipped to the actor first."""
        refs: dict[int, Any] = {}
        for j in self.trainable:
            model = self.models[j]
            if j not in self._actors:
                shape = self._shapes()[j]
                actor = self.ray.remote(_TrainableActor).options(num_cpus=shape["num_cpus"],
                                                                  num_gpus=shape["num_gpus"] or None)
                self._actors[j] = actor.remote(model)
            elif self._shipped[j] is not model:
                self._actors[j].set_model.remote(model)
            self._shipped[j] = model
            refs[j] = self._actors[j].predict.remote(list(texts))
        return refs

    def trainable_pids(self) -> dict[int, int]:
        """The worker process each trainable model votes in (for tests and the README's claim)."""
        return {j: self.ray.get(a.pid.remote()) for j, a in self._actors.items()}

    def ensemble(self, row_ids: Sequence[int], texts: Sequence[str]) -> EnsembleOutput:
        if len(row_ids) != len(texts):
            raise ValueError("one row id per text")
        asked = self._trainable_votes(texts)
        frozen = self._frozen_for(row_ids, texts)
        preds: list[Prediction] = []
        for j in range(len(self.models)):
            if j in frozen:
                votes, proba = frozen[j]
                preds.append(Prediction(votes, proba))
            else:
                preds.append(self.ray.get(asked[j]))
        n = len(texts)
        if preds:
            votes = np.stack([p.votes for p in preds], axis=1)
            confidence = np.stack([p.confidence for p in preds], axis=1)
        else:
            votes = np.full((n, 0), -1, dtype=np.int64)
            confidence = np.zeros((n, 0), dtype=np.float32)
        majority, uncertainty, n_votes = tally(votes, self.n_labels, self.min_votes)
        return EnsembleOutput(votes, confidence, majority, uncertainty, n_votes)

    def train_round(self, model: TrainableSLM, data: Any, cfg: Any, round_: int, save_dir: Path
                    ) -> tuple[TrainableSLM, dict]:
        """A fine-tuning round as a Ray task (no CPU share reserved: the actor pools hold the CPUs, and the
        loop waits for the round anyway); the round's texts travel with it (``finetune.RoundData``); the
        kept model comes back to the loop's list, and goes to its voting actor before the next vote."""
        task = self.ray.remote(_round_on_worker).options(num_cpus=0)
        kept, record, pid = self.ray.get(task.remote(model, data, cfg, round_, str(save_dir)))
        self.round_pids.append(pid)
        return kept, record

    def models_changed(self) -> None:
        return None  # the loop's list is read on every chunk: a replaced model is shipped before its next vote

    def close(self) -> None:
        self._stream, self._buf = None, None
        for actor in self._actors.values():
            self.ray.kill(actor)
        self._actors, self._shipped = {}, {}
