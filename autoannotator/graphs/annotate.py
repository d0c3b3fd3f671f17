"""The annotation loop as a LangGraph StateGraph.

    START -> load_batch -> ensemble -(U >= eps?)-> verify -> accept -(pool >= beta?)-> finetune
                                     \\-------------------> accept -> load_batch | report -> END

Nodes close over an ``AnnotateContext`` (loaded models, verifier, stores) that is rebuilt on
resume; the checkpointed state holds only cursors, the current batch and counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path

from langgraph.graph import END, START, StateGraph

from autoannotator.config import Settings
from autoannotator.data import Dataset
from autoannotator.engine.base import Engine
from autoannotator.engine.steps import (
    accept_records,
    finetune_trainables,
    majority_label,
    row_votes,
    score_batch,
    verify_rows,
)
from autoannotator.graphs.routing import hard_positions, route_after_accept, route_after_ensemble, route_next_batch
from autoannotator.graphs.state import AnnotateState
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
        start = time.perf_counter()
        update = fn(state)
        update["timings"] = {name: time.perf_counter() - start}
        return update

    node.__name__ = name
    return node


def build_annotate_graph(ctx: AnnotateContext, checkpointer=None):
    labels = ctx.task.label_names
    if ctx.text_of is not None:
        text_of = ctx.text_of
    else:
        assert ctx.dataset is not None, "the graph needs a dataset or a text_of"
        texts = ctx.dataset.texts

        def text_of(row_id: int) -> str:
            return texts[row_id]

    def load_batch(state: AnnotateState) -> dict:
        start = state.get("cursor", 0)
        stop = min(start + ctx.settings.batch_size, state["n_rows"])
        return {"batch_ids": list(range(start, stop)), "cursor": stop, "batch": None, "verified": {}}

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
            ctx.writer.append(ids, label_columns(records))
        ctx.on_progress({"event": "accepted", "n": len(ids), "llm": len(verified),
                         "pool_size": state.get("pool_size", 0)})
        return {"batch_index": state.get("batch_index", 0) + 1, "batch_ids": [], "batch": None, "verified": {}}

    def finetune(state: AnnotateState) -> dict:
        round_ = state.get("finetune_round", 0) + 1
        accepted, pool_size = finetune_trainables(ctx.models, ctx.store, text_of, labels, ctx.settings, round_,
                                                  RunPaths(ctx.run_dir).models, ctx.on_progress)
        weights = {**(state.get("weights") or {}), **accepted}
        return {"finetune_round": round_, "pool_at_last_finetune": pool_size, "weights": weights}

    def report(state: AnnotateState) -> dict:
        # The runner builds the report from the store once the graph has ended: this node only marks the end.
        ctx.on_progress({"event": "finished", "n_rows": state["n_rows"]})
        return {"finished": True}

    graph = StateGraph(AnnotateState)
    for name, fn in [("load_batch", load_batch), ("ensemble", ensemble), ("verify", verify), ("accept", accept),
                     ("finetune", finetune), ("report", report)]:
        graph.add_node(name, _timed(name, fn))
    graph.add_conditional_edges(START, route_next_batch, ["load_batch", "report"])
    graph.add_edge("load_batch", "ensemble")
    graph.add_conditional_edges("ensemble", route_after_ensemble, ["verify", "accept"])
    graph.add_edge("verify", "accept")
    graph.add_conditional_edges("accept", route_after_accept, ["finetune", "load_batch", "report"])
    graph.add_conditional_edges("finetune", route_next_batch, ["load_batch", "report"])
    graph.add_edge("report", END)
    return graph.compile(checkpointer=checkpointer)
