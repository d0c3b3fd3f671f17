"""The annotation loop as a LangGraph StateGraph.

    START -> load_batch -> ensemble -(U >= eps?)-> verify -> accept -(pool >= beta?)-> finetune
                                     \\-------------------> accept -> load_batch | report -> END

Nodes close over an ``AnnotateContext`` (loaded models, verifier, stores) that is rebuilt on
resume; the checkpointed state holds only cursors, the current batch and counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from langgraph.graph import END, START, StateGraph

from autoannotator.config import Settings
from autoannotator.data import Dataset
from autoannotator.ensemble import run_ensemble
from autoannotator.finetune import finetune_model, split_holdout
from autoannotator.graphs.routing import hard_positions, route_after_accept, route_after_ensemble, route_next_batch
from autoannotator.graphs.state import AnnotateState, BatchVotes
from autoannotator.slm.base import SLM, TrainableSLM
from autoannotator.store import RunStore
from autoannotator.task import TaskSpec

SKIPPED = "skipped_empty"


@dataclass
class AnnotateContext:
    dataset: Dataset
    task: TaskSpec
    models: list[SLM]
    verifier: Any  # autoannotator.agent.verifier.Verifier (anything with .verify(items))
    store: RunStore
    settings: Settings
    run_dir: Path
    on_report: Callable[[AnnotateState], None]
    on_progress: Callable[[dict], None] = lambda event: None
    empty_rows: set[int] = field(default_factory=set)


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
    texts = ctx.dataset.texts

    def load_batch(state: AnnotateState) -> dict:
        start = state.get("cursor", 0)
        stop = min(start + ctx.settings.batch_size, state["n_rows"])
        return {"batch_ids": list(range(start, stop)), "cursor": stop, "batch": None, "verified": {}}

    def ensemble(state: AnnotateState) -> dict:
        ids = state["batch_ids"]
        live = [i for i in ids if i not in ctx.empty_rows]
        out = run_ensemble(ctx.models, [texts[i] for i in live], len(labels), ctx.settings.min_votes)
        pos = {rid: j for j, rid in enumerate(live)}
        k = len(ctx.models)
        batch: BatchVotes = {"votes": [], "confidence": [], "majority": [], "uncertainty": []}
        for rid in ids:
            j = pos.get(rid)
            if j is None:
                batch["votes"].append([-1] * k)
                batch["confidence"].append([0.0] * k)
                batch["majority"].append(-1)
                batch["uncertainty"].append(None)
            else:
                batch["votes"].append(out.votes[j].tolist())
                batch["confidence"].append([round(float(c), 4) for c in out.confidence[j]])
                batch["majority"].append(int(out.majority[j]))
                batch["uncertainty"].append(round(float(out.uncertainty[j]), 6))
        return {"batch": batch}

    def votes_at(batch: BatchVotes, pos: int) -> dict[str, dict]:
        return {m.name: {"label": labels[v] if v >= 0 else None, "p": c}
                for m, v, c in zip(ctx.models, batch["votes"][pos], batch["confidence"][pos])}

    def verify(state: AnnotateState) -> dict:
        ids, batch = state["batch_ids"], state["batch"]
        positions = hard_positions(state)
        hard = [ids[i] for i in positions]
        set_hints = getattr(ctx.verifier, "set_hints", None)
        if set_hints is not None:  # a human verifier shows the SLM votes next to each hard sample
            set_hints({ids[p]: {"votes": votes_at(batch, p), "uncertainty": batch["uncertainty"][p],
                                "majority": labels[batch["majority"][p]] if batch["majority"][p] >= 0 else None}
                       for p in positions})
        results = ctx.verifier.verify([(rid, texts[rid]) for rid in hard])
        verified = {str(r.row_id): r.label for r in results}
        pool_size = ctx.store.add_to_pool([(int(k), v) for k, v in verified.items()], state.get("batch_index", 0))
        ctx.on_progress({"event": "verified", "n": len(verified), "pool_size": pool_size})
        return {"verified": verified, "pool_size": pool_size}

    def accept(state: AnnotateState) -> dict:
        ids, batch, verified = state["batch_ids"], state["batch"], state.get("verified") or {}
        records = []
        for pos, rid in enumerate(ids):
            votes = votes_at(batch, pos)
            majority = labels[batch["majority"][pos]] if batch["majority"][pos] >= 0 else None
            llm_label = verified.get(str(rid))
            if batch["uncertainty"][pos] is None:
                label, source = None, SKIPPED
            elif llm_label is not None:
                label, source = llm_label, "llm_verified"
            else:
                label, source = majority, "slm_consensus"
            records.append({"row_id": rid, "label": label, "label_source": source, "uncertainty":
                            batch["uncertainty"][pos], "votes": votes, "majority": majority,
                            "llm_label": llm_label, "batch": state.get("batch_index", 0)})
        ctx.store.put_results(records)
        ctx.on_progress({"event": "accepted", "n": len(ids), "llm": len(verified),
                         "pool_size": state.get("pool_size", 0)})
        return {"batch_index": state.get("batch_index", 0) + 1, "batch_ids": [], "batch": None, "verified": {}}

    def finetune(state: AnnotateState) -> dict:
        round_ = state.get("finetune_round", 0) + 1
        pool = ctx.store.pool()
        label_idx = {name: i for i, name in enumerate(labels)}
        by_id = dict(pool)
        train_ids, hold_ids = split_holdout([rid for rid, _ in pool], ctx.settings.finetune, ctx.settings.seed)

        def part(ids: list[int]) -> tuple[list[str], np.ndarray]:
            return [texts[r] for r in ids], np.array([label_idx[by_id[r]] for r in ids], dtype=np.int64)

        weights = dict(state.get("weights") or {})
        for i, model in enumerate(ctx.models):
            if not isinstance(model, TrainableSLM):
                continue
            ctx.on_progress({"event": "finetune_start", "model": model.name, "round": round_, "n": len(train_ids)})
            kept, record = finetune_model(model, part(train_ids), part(hold_ids), ctx.settings.finetune, round_,
                                          ctx.run_dir / "models")
            ctx.models[i] = kept
            if record["weights"]:
                weights[model.name] = record["weights"]
            ctx.store.put_finetune_record(round_, model.name, record)
            ctx.on_progress({"event": "finetune_done", **record})
        return {"finetune_round": round_, "pool_at_last_finetune": len(pool), "weights": weights}

    def report(state: AnnotateState) -> dict:
        ctx.on_report(state)
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
