"""The one implementation of each step of the annotation loop.

The graph's nodes (``graphs/annotate.py``) and the chat's loop tools (``run_ensemble``,
``verify_samples``, ``launch_finetune`` in ``tools/loop_tools.py``) call these functions, so a step
run from chat is the same step the loop runs.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoannotator.config import Settings
from autoannotator.engine.base import Engine
from autoannotator.finetune import finetune_model, split_holdout
from autoannotator.ensemble import BatchVotes, run_ensemble
from autoannotator.run.store import RunStore
from autoannotator.slm.base import SLM, TrainableSLM
from autoannotator.task import LabelSource
from autoannotator.verify.base import HintedVerifier, Verifier


def score_batch(models: Sequence[SLM], row_ids: Sequence[int], text_of: Callable[[int], str],
                empty_rows: Container[int], n_labels: int, min_votes: int, engine: Engine | None = None) -> BatchVotes:
    """Each model's vote and probability per row, the majority and U(x); empty texts get no U.
    ``engine`` runs the ensemble (``engine/ray_engine.py``: on Ray); default: in this process."""
    live = [i for i in row_ids if i not in empty_rows]
    live_texts = [text_of(i) for i in live]
    out = (engine.ensemble(live, live_texts) if engine is not None
           else run_ensemble(models, live_texts, n_labels, min_votes))
    pos = {rid: j for j, rid in enumerate(live)}
    k = len(models)
    batch: BatchVotes = {"votes": [], "confidence": [], "majority": [], "uncertainty": []}
    for rid in row_ids:
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
    return batch


def row_votes(models: Sequence[SLM], labels: Sequence[str], batch: BatchVotes, pos: int) -> dict[str, dict]:
    """The votes of one row as the store records them: model -> {"label", "p"}."""
    return {m.name: {"label": labels[v] if v >= 0 else None, "p": c}
            for m, v, c in zip(models, batch["votes"][pos], batch["confidence"][pos])}


def majority_label(labels: Sequence[str], batch: BatchVotes, pos: int) -> str | None:
    return labels[batch["majority"][pos]] if batch["majority"][pos] >= 0 else None


def verify_rows(verifier: Verifier, store: RunStore, items: list[tuple[int, str]], batch_index: int,
                hints: dict[int, dict] | None = None) -> tuple[dict[str, str], int]:
    """Ask the verifier about ``items``; its answers join the hard-sample pool.
    Returns (row id as text -> label, the pool's size)."""
    if hints and isinstance(verifier, HintedVerifier):  # a human sees the SLM votes next to each sample
        verifier.set_hints(hints)
    results = verifier.verify(items)
    verified = {str(r.row_id): r.label for r in results}
    pool_size = store.add_to_pool([(int(k), v) for k, v in verified.items()], batch_index)
    return verified, pool_size


def accept_records(models: Sequence[SLM], labels: Sequence[str], row_ids: Sequence[int], batch: BatchVotes,
                   verified: dict[str, str], batch_index: int) -> list[dict[str, Any]]:
    """The final label of each row: the verifier's where it answered, else the models' majority."""
    records = []
    for pos, rid in enumerate(row_ids):
        majority = majority_label(labels, batch, pos)
        llm_label = verified.get(str(rid))
        if batch["uncertainty"][pos] is None:
            label, source = None, LabelSource.SKIPPED_EMPTY
        elif llm_label is not None:
            label, source = llm_label, LabelSource.LLM_VERIFIED
        else:
            label, source = majority, LabelSource.SLM_CONSENSUS
        records.append({"row_id": rid, "label": label, "label_source": source.value, "uncertainty":
                        batch["uncertainty"][pos], "votes": row_votes(models, labels, batch, pos),
                        "majority": majority, "llm_label": llm_label, "batch": batch_index})
    return records


def finetune_trainables(models: list[SLM], store: RunStore, text_of: Callable[[int], str], labels: Sequence[str],
                        settings: Settings, round_: int, models_dir: Path,
                        on_progress: Callable[[dict], None] = lambda event: None) -> tuple[dict[str, str], int]:
    """The beta branch: fine-tune every trainable model on the pool, guarded by its held-out slice.
    Replaces accepted models in ``models`` in place; returns (model name -> accepted weights, pool size)."""
    pool = store.pool()
    label_idx = {name: i for i, name in enumerate(labels)}
    by_id = dict(pool)
    train_ids, hold_ids = split_holdout([rid for rid, _ in pool], settings.finetune, settings.seed)

    def part(ids: list[int]) -> tuple[list[str], np.ndarray]:
        return [text_of(r) for r in ids], np.array([label_idx[by_id[r]] for r in ids], dtype=np.int64)

    weights: dict[str, str] = {}
    for i, model in enumerate(models):
        if not isinstance(model, TrainableSLM):
            continue
        on_progress({"event": "finetune_start", "model": model.name, "round": round_, "n": len(train_ids)})
        kept, record = finetune_model(model, part(train_ids), part(hold_ids), settings.finetune, round_, models_dir)
        models[i] = kept
        if record["weights"]:
            weights[model.name] = record["weights"]
        store.put_finetune_record(round_, model.name, record)
        on_progress({"event": "finetune_done", **record})
    return weights, len(pool)
