"""The annotation graph's state: small, JSON-serialisable, checkpointed after every step.

Per-sample results do not live here: they go to the run store (``store.py``) as each batch is
accepted, so a checkpoint stays the size of one batch whatever the data set's size.
"""

from __future__ import annotations

from typing import Annotated, TypedDict

from autoannotator.ensemble import BatchVotes


def add_timings(old: dict[str, float] | None, new: dict[str, float] | None) -> dict[str, float]:
    merged = dict(old or {})
    for key, seconds in (new or {}).items():
        merged[key] = round(merged.get(key, 0.0) + seconds, 4)
    return merged


class AnnotateState(TypedDict, total=False):
    n_rows: int
    epsilon: float
    beta: int
    has_trainable: bool
    cursor: int  # position of the next row to load
    batch_index: int
    batch_ids: list[int]
    batch: BatchVotes | None
    verified: dict[str, str]  # row id (as text: JSON keys) -> LLM label, for this batch's hard rows
    routed: dict | None  # the decision layer's choice for this batch: {"ask": [ids], "audit": [ids], "cost": USD}
    audit_answers: dict[str, str]  # row id (as text) -> LLM label, for this batch's audit rows
    decide: dict  # the decision layer's counters (budget, audit, usage): decide/online.py state_dict
    decide_summary: dict  # reliabilities, verdict, audit estimate: written by the report node
    pool_size: int
    pool_at_last_finetune: int
    finetune_round: int
    warm_started: bool  # the warm-start node ran (whether or not it trained)
    finetune_seen: int  # labelled rows (processing order) that earlier rounds covered: later ones are new
    weights: dict[str, str]  # trainable model name -> accepted weights folder
    # A background round in flight (finetune.overlap): {"round", "launch_batch", "seen_upto"}; None when none
    finetune_pending: dict | None
    # The first batch labelled with the trainable models' current weights (the batch index when they came in):
    # rows settled in earlier batches are voted on again by the finishing step (``Settings.final_revote``).
    weights_from_batch: int
    top_up: list[int]  # the settled rows the finishing steps ask from the reserve (``Settings.final_reserve``)
    finalized: bool  # the finishing steps (re-vote, top-up, relabel under the final posterior) are done
    timings: Annotated[dict[str, float], add_timings]
    finished: bool
