"""Pure routers for the annotation graph's conditional edges: no I/O, no LLM, unit-testable."""

from __future__ import annotations

from typing import Literal

from autoannotator.ensemble import is_hard
from autoannotator.graphs.state import AnnotateState


def hard_positions(state: AnnotateState) -> list[int]:
    """Positions in the current batch whose U(x) >= epsilon (empty texts have no U and are never hard)."""
    batch = state.get("batch") or {"uncertainty": []}
    eps = state["epsilon"]
    return [i for i, u in enumerate(batch["uncertainty"]) if u is not None and is_hard(u, eps)]


def routed_rows(state: AnnotateState) -> tuple[list[int], list[int]]:
    """(row ids to ask, row ids to audit) as the decision layer chose them for this batch; without
    its choice (a state from before it existed) the paper's rule on U."""
    routed = state.get("routed")
    if routed is not None:
        return list(routed.get("ask", [])), list(routed.get("audit", []))
    ids = state.get("batch_ids") or []
    return [ids[p] for p in hard_positions(state) if p < len(ids)], []


def route_after_ensemble(state: AnnotateState) -> Literal["verify", "accept"]:
    """To the verifier when the decision layer (``decide/``: the paper's U >= epsilon or the
    calibrated rule, within the budget) routed a row, or picked one for the audit."""
    if state.get("routed") is None:
        return "verify" if hard_positions(state) else "accept"
    ask, audit = routed_rows(state)
    return "verify" if ask or audit else "accept"


def should_finetune(pool_size: int, pool_at_last_finetune: int, beta: int, has_trainable: bool,
                    pending: bool = False) -> bool:
    """The beta branch: fine-tune once beta new LLM-verified samples have joined the pool; while a
    background round is still in flight (``pending``) the next one waits, so rounds never stack up."""
    return has_trainable and not pending and pool_size - pool_at_last_finetune >= beta


def route_next_batch(state: AnnotateState) -> Literal["load_batch", "final_fit", "report"]:
    """The next batch; after the last one the finishing steps (final fit, re-vote, relabel), once."""
    if state.get("cursor", 0) < state["n_rows"]:
        return "load_batch"
    return "report" if state.get("finalized") else "final_fit"


def route_after_accept(state: AnnotateState) -> Literal["finetune", "load_batch", "final_fit", "report"]:
    if should_finetune(state.get("pool_size", 0), state.get("pool_at_last_finetune", 0), state["beta"],
                       state.get("has_trainable", False), bool(state.get("finetune_pending"))):
        return "finetune"
    return route_next_batch(state)
