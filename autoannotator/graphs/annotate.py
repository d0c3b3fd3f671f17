"""The annotation loop as a LangGraph StateGraph.

    START -(warm start?)-> warm_start -> load_batch -> ensemble -(U >= eps?)-> verify -> accept
                                                              \\-------------------> accept
    accept -(beta new verified?)-> finetune -> load_batch | report -> END

Nodes close over an ``AnnotateContext`` (loaded models, verifier, stores) that is rebuilt on
resume; the checkpointed state holds only cursors, the current batch and counters.

Rows are taken in ``processing_order``: a seeded shuffle by default, derived from the seed and
the row count alone, so a resumed run walks the same order with nothing stored but its cursor.
Results are keyed by row id, so the output keeps the input's order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from langgraph.graph import END, START, StateGraph

from autoannotator.config import Settings
from autoannotator.data import DEFAULT_CHUNK_ROWS, Dataset
from autoannotator.engine.base import Engine
from autoannotator.engine.steps import (
    accept_records,
    finetune_trainables,
    majority_label,
    row_votes,
    score_batch,
    train_on_records,
    verify_rows,
    warm_start_records,
)
from autoannotator.graphs.routing import hard_positions, route_after_accept, route_after_ensemble, route_next_batch
from autoannotator.graphs.state import AnnotateState
from autoannotator.run.faultpoint import faultpoint
from autoannotator.run.output import ShardWriter, label_columns
from autoannotator.run.paths import RunPaths
from autoannotator.run.store import RunStore
from autoannotator.slm.base import SLM
from autoannotator.task import TaskSpec
from autoannotator.verify.base import Verifier


@dataclass
class AnnotateContext:
    """What the nodes work with; rebuilt on resume (only the state is checkpointed)."""

    dataset: Dataset | None  # the whole data set in memory, or None when the rows come from ``text_of``
    task: TaskSpec
    models: list[SLM]
    verifier: Verifier
    store: RunStore
    settings: Settings
    run_dir: Path
    on_progress: Callable[[dict], None] = lambda event: None
    empty_rows: Container[int] = field(default_factory=set)
    # Chunked input: the text of a row id (a ``data.RowTexts`` over the data source), the engine that runs
    # the ensemble step (default: in-process), and the writer that shards the labelled output as batches
    # are accepted.
    text_of: Callable[[int], str] | None = None
    engine: Engine | None = None
    writer: ShardWriter | None = None


def _timed(name: str, fn: Callable[[AnnotateState], dict]) -> Callable[[AnnotateState], dict]:
    def node(state: AnnotateState) -> dict:
        faultpoint("before", name)  # the fault suite's crash points; nothing unless its env var is set
        start = time.perf_counter()
        update = fn(state)
        update["timings"] = {name: time.perf_counter() - start}
        faultpoint("after", name)
        return update

    node.__name__ = name
    return node


def processing_order(n_rows: int, seed: int, shuffle: bool = True, block_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """Row ids in the order the loop takes them; a function of (seed, n_rows) only, so resume finds it again.

    Shuffled within aligned blocks of ``block_rows`` (the chunked reader's window), blocks in file order:
    a file sorted by label is mixed within each block (a file up to a block's size entirely), and the
    reader still reads each block once.
    """
    if not shuffle:
        return np.arange(n_rows)
    rng = np.random.default_rng([seed, n_rows])
    return np.concatenate([lo + rng.permutation(min(block_rows, n_rows - lo)) for lo in range(0, n_rows, block_rows)]
                          or [np.arange(0)])


def write_finished_blocks(writer: ShardWriter, store: RunStore, batch_ids: list[int], n_rows: int,
                          block_rows: int = DEFAULT_CHUNK_ROWS) -> None:
    """Shard every processing block this batch completed: rows are taken shuffled within a block, so a
    block's labels are written (contiguous, from the store) once all of its rows are in."""
    for lo in sorted({rid - rid % block_rows for rid in batch_ids}):
        hi = min(lo + block_rows, n_rows)
        if store.count_between(lo, hi) == hi - lo:
            rows = store.results_between(lo, hi)
            writer.append([r["row_id"] for r in rows], label_columns(rows))


def build_annotate_graph(ctx: AnnotateContext, checkpointer=None):
    labels = ctx.task.label_names
    cfg = ctx.settings.finetune
    orders: dict[int, np.ndarray] = {}

    def order_of(n_rows: int) -> np.ndarray:
        """The processing order, computed once per process from (seed, n_rows): nothing stored."""
        if n_rows not in orders:
            orders[n_rows] = processing_order(n_rows, ctx.settings.seed, cfg.shuffle_rows)
        return orders[n_rows]

    if ctx.text_of is not None:
        text_of = ctx.text_of
    else:
        assert ctx.dataset is not None, "the graph needs a dataset or a text_of"
        texts = ctx.dataset.texts

        def text_of(row_id: int) -> str:
            return texts[row_id]

    def route_start(state: AnnotateState) -> str:
        """A run with trainable models warms them up before its first batch (once; when the settings ask)."""
        if cfg.warm_start and state.get("has_trainable") and not state.get("warm_started") \
                and not state.get("finetune_round", 0) and state.get("cursor", 0) == 0:
            return "warm_start"
        return route_next_batch(state)

    def warm_start(state: AnnotateState) -> dict:
        """Before any LLM call: train on the frozen models' confident agreements among the first rows."""
        ids = [int(r) for r in order_of(state["n_rows"])[:cfg.warm_start_rows] if int(r) not in ctx.empty_rows]
        records = warm_start_records(ctx.models, ids, text_of, labels, ctx.settings)
        found = {r["label"] for r in records}
        if len(found) < 2:  # one label or none: nothing a classifier could learn
            ctx.on_progress({"event": "note", "text": f"warm start skipped: the agreements among the first "
                                                      f"{len(ids)} rows hold {len(found)} label(s)"})
            return {"warm_started": True}
        weights = train_on_records(ctx.models, records, text_of, labels, ctx.settings, 1,
                                   RunPaths(ctx.run_dir).models, ctx.store, kind="warm_start",
                                   on_progress=ctx.on_progress)
        return {"warm_started": True, "finetune_round": 1, "finetune_seen": 0,
                "weights": {**(state.get("weights") or {}), **weights}}

    def load_batch(state: AnnotateState) -> dict:
        start = state.get("cursor", 0)
        stop = min(start + ctx.settings.batch_size, state["n_rows"])
        return {"batch_ids": order_of(state["n_rows"])[start:stop].tolist(), "cursor": stop, "batch": None,
                "verified": {}}

    def ensemble(state: AnnotateState) -> dict:
        return {"batch": score_batch(ctx.models, state["batch_ids"], text_of, ctx.empty_rows, len(labels),
                                     ctx.settings.min_votes, engine=ctx.engine)}

    def verify(state: AnnotateState) -> dict:
        ids, batch = state["batch_ids"], state["batch"]
        positions = hard_positions(state)
        hints = {ids[p]: {"votes": row_votes(ctx.models, labels, batch, p), "uncertainty": batch["uncertainty"][p],
                          "majority": majority_label(labels, batch, p)} for p in positions}
        verified, pool_size = verify_rows(ctx.verifier, ctx.store, [(ids[p], text_of(ids[p])) for p in positions],
                                          state.get("batch_index", 0), hints)
        ctx.on_progress({"event": "verified", "n": len(verified), "pool_size": pool_size})
        return {"verified": verified, "pool_size": pool_size}

    def accept(state: AnnotateState) -> dict:
        ids, verified = state["batch_ids"], state.get("verified") or {}
        records = accept_records(ctx.models, labels, ids, state["batch"], verified, state.get("batch_index", 0))
        ctx.store.put_results(records)
        if ctx.writer is not None:  # the output as it goes; rows the store has but no shard are filled at the end
            write_finished_blocks(ctx.writer, ctx.store, ids, state["n_rows"])
        ctx.on_progress({"event": "accepted", "n": len(ids), "llm": len(verified),
                         "pool_size": state.get("pool_size", 0)})
        return {"batch_index": state.get("batch_index", 0) + 1, "batch_ids": [], "batch": None, "verified": {}}

    def finetune(state: AnnotateState) -> dict:
        round_ = state.get("finetune_round", 0) + 1
        seen = ctx.store.n_results()  # every row so far; the next round's new rows come after these
        accepted, pool_size = finetune_trainables(ctx.models, ctx.store, text_of, labels, ctx.settings, round_,
                                                  RunPaths(ctx.run_dir).models, ctx.on_progress,
                                                  seen_upto=state.get("finetune_seen", 0))
        weights = {**(state.get("weights") or {}), **accepted}
        return {"finetune_round": round_, "pool_at_last_finetune": pool_size, "finetune_seen": seen,
                "weights": weights}

    def report(state: AnnotateState) -> dict:
        # The runner builds the report from the store once the graph has ended: this node only marks the end.
        ctx.on_progress({"event": "finished", "n_rows": state["n_rows"]})
        return {"finished": True}

    graph = StateGraph(AnnotateState)
    for name, fn in [("warm_start", warm_start), ("load_batch", load_batch), ("ensemble", ensemble),
                     ("verify", verify), ("accept", accept), ("finetune", finetune), ("report", report)]:
        graph.add_node(name, _timed(name, fn))
    graph.add_conditional_edges(START, route_start, ["warm_start", "load_batch", "report"])
    graph.add_conditional_edges("warm_start", route_next_batch, ["load_batch", "report"])
    graph.add_edge("load_batch", "ensemble")
    graph.add_conditional_edges("ensemble", route_after_ensemble, ["verify", "accept"])
    graph.add_edge("verify", "accept")
    graph.add_conditional_edges("accept", route_after_accept, ["finetune", "load_batch", "report"])
    graph.add_conditional_edges("finetune", route_next_batch, ["load_batch", "report"])
    graph.add_edge("report", END)
    return graph.compile(checkpointer=checkpointer)
