"""The annotation loop as a LangGraph StateGraph.

    START -(warm start?)-> warm_start -> load_batch -> ensemble -(routed or audited?)-> verify -> accept
                                                              \\-------------------------> accept
    accept -(beta new verified?)-> finetune -> load_batch | final_fit -> revote -> choose_top_up -> top_up
                                                                      -> report -> END

With ``finetune.overlap`` the finetune node only starts the round (``engine/steps.py``: a thread
training copies of the models) and the loop labels on with the current weights; load_batch, at
the next batch boundaries, swaps the kept weights in once the round has ended (or, with
``overlap_batches``, exactly that many batches after it began), and report waits for a round
still training. The state names the round in flight (``finetune_pending``); a resumed run finds
no thread for it and trains it again from the rows labelled before it began (they are in the store).

The ensemble node asks the decision layer (``decide/online.py``) which rows go to the LLM: the
paper's U >= epsilon or the calibrated rule, within ``--llm-budget`` / ``--max-llm-cost``, plus a
seeded audit sample of settled rows; the accept node takes each row's label from it (the LLM's
answer under ``paper``, the posterior under ``calibrated``) with its confidence.

Nodes close over an ``AnnotateContext`` (loaded models, verifier, stores) that is rebuilt on
resume; the checkpointed state holds only cursors, the current batch and counters (the decision
layer's too: its votes are rebuilt from the run store).

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
from autoannotator.data import DEFAULT_CHUNK_ROWS, FINISH_CHUNK_ROWS, Dataset
from autoannotator.decide.online import Decision, OnlineDecider
from autoannotator.engine.base import Engine
from autoannotator.engine.steps import (
    BackgroundRound,
    finetune_trainables,
    finish_background_round,
    labelled_in_order,
    majority_label,
    row_votes,
    score_batch,
    ask_verifier,
    start_background_round,
    train_on_records,
    warm_start_records,
)
from autoannotator.graphs.routing import route_after_accept, route_after_ensemble, route_next_batch, routed_rows
from autoannotator.graphs.state import AnnotateState
from autoannotator.run.cache import HUMAN
from autoannotator.run.faultpoint import faultpoint
from autoannotator.run.output import ShardWriter
from autoannotator.run.paths import RunPaths
from autoannotator.run.report_decisions import unreliable_text
from autoannotator.run.store import RunStore
from autoannotator.slm.base import SLM, TrainableSLM
from autoannotator.task import LabelSource, TaskSpec
from autoannotator.verify.base import Verifier
from autoannotator.verify.examples import FewShotPicker

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
    # ``--few-shot N``: chooses each hard row's labelled examples from earlier batches (None: zero-shot).
    few_shot: FewShotPicker | None = None


def _timed(name: str, fn: Callable[[AnnotateState], dict]) -> Callable[[AnnotateState], dict]:
    def node(state: AnnotateState) -> dict:
        faultpoint("before", name)  # the fault suite's crash points; nothing unless its env var is set
        start = time.perf_counter()
        update = fn(state)
        update["timings"] = {**update.get("timings", {}), name: time.perf_counter() - start}
        faultpoint("after", name)
        return update

    node.__name__ = name
    return node


def _tokens(result) -> tuple[int, int]:
    """(tokens in, tokens out) of a verifier result; a verifier may report no usage (a person, a test double)."""
    return int(getattr(result, "tokens_in", 0) or 0), int(getattr(result, "tokens_out", 0) or 0)


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
            writer.append_stored(store, lo, hi)


def build_annotate_graph(ctx: AnnotateContext, checkpointer=None):
    labels = ctx.task.label_names
    cfg = ctx.settings.finetune
    orders: dict[int, np.ndarray] = {}
    inflight: dict[int, BackgroundRound] = {}  # background rounds of this process, by round number

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
                                   on_progress=ctx.on_progress, engine=ctx.engine)
        return {"warm_started": True, "finetune_round": 1, "finetune_seen": 0,
                "weights": {**(state.get("weights") or {}), **weights}, "weights_from_batch": 0}

    def load_batch(state: AnnotateState) -> dict:
        start = state.get("cursor", 0)
        stop = min(start + ctx.settings.batch_size, state["n_rows"])
        return {**take_finished_round(state, wait=False),
                "batch_ids": order_of(state["n_rows"])[start:stop].tolist(), "cursor": stop, "batch": None,
                "verified": {}}

    def take_finished_round(state: AnnotateState, wait: bool) -> dict:
        """At a batch boundary: swap in a background round's kept weights once it has ended (at the
        fixed ``overlap_batches`` point, or with ``wait``, once it has ended whatever it takes)."""
        pending = state.get("finetune_pending")
        if not pending:
            return {}
        bg = inflight.get(pending["round"])
        if bg is None:  # resumed: the thread died with the process, so the round is trained again
            bg = inflight[pending["round"]] = start_background_round(
                ctx.models, labelled_in_order(ctx.store, before_batch=pending["launch_batch"]), text_of, labels,
                ctx.settings, pending["round"], RunPaths(ctx.run_dir).models, ctx.on_progress,
                seen_upto=pending["seen_upto"], engine=ctx.engine)
        since = state.get("batch_index", 0) - pending["launch_batch"]
        due = bg.done() if cfg.overlap_batches is None else since >= cfg.overlap_batches
        if not (wait or due):
            return {}
        accepted, waited = finish_background_round(
            bg, ctx.models, ctx.store, ctx.on_progress,
            overlap={"launch_batch": pending["launch_batch"], "swap_batch": state.get("batch_index", 0),
                     "batches_overlapped": since})
        del inflight[pending["round"]]
        if accepted and ctx.engine is not None:
            ctx.engine.models_changed()
        since_batch = {"weights_from_batch": state.get("batch_index", 0)} if accepted else {}
        return {"finetune_pending": None, "weights": {**(state.get("weights") or {}), **accepted},
                "timings": {"finetune_wait": waited}, **since_batch}

    label_idx = {name: i for i, name in enumerate(labels)}
    box: dict[str, OnlineDecider] = {}

    def decider(state: AnnotateState) -> OnlineDecider:
        """The decision layer of this process: built once, restored from the checkpointed counters
        and the run store's votes (a resumed run continues where it stopped)."""
        if "d" not in box:
            d = OnlineDecider.from_settings(ctx.settings, state["n_rows"], len(labels), [m.name for m in ctx.models],
                                            answers_final=ctx.verifier.model_id == HUMAN)
            d.restore(state.get("decide") or {}, (_book_row(r) for part in ctx.store.iter_results() for r in part))
            box["d"] = d
        return box["d"]

    def _book_row(rec: dict) -> dict:
        votes = [rec["votes"].get(m.name) or {} for m in ctx.models]
        slm = [label_idx.get(v.get("label"), -1) for v in votes]
        conf = [float(v.get("p") or 0.0) for v in votes]
        return {"row_id": rec["row_id"], "slm": slm, "conf": conf, "llm": label_idx.get(rec.get("llm_label"), -1),
                "audit": bool(rec.get("audit")), "label": label_idx.get(rec["label"], -1),
                "source": str(rec["label_source"]), "uncertainty": rec.get("uncertainty")}

    def ensemble(state: AnnotateState) -> dict:
        ids = state["batch_ids"]
        batch = score_batch(ctx.models, ids, text_of, ctx.empty_rows, len(labels), ctx.settings.min_votes,
                            engine=ctx.engine)
        d = decider(state)
        live = [u is not None for u in batch["uncertainty"]]
        plan = d.plan(ids, np.asarray(batch["votes"], dtype=np.int64).reshape(len(ids), len(ctx.models)),
                      uncertainty=batch["uncertainty"], live=live,
                      confidence=np.asarray(batch["confidence"], dtype=np.float64).reshape(len(ids), len(ctx.models)))
        verdict = d.verdict()
        if verdict.unreliable and not d.unreliable_noted:
            d.unreliable_noted = True
            verdict_now = d.verdict(estimates=True).as_dict(ctx.task.label_names)
            ctx.on_progress({"event": "note", "text": unreliable_text(verdict_now, d.llm_accuracy)
                             + "; its answers no longer move labels"})
        return {"batch": batch, "routed": {"ask": plan.ask, "audit": plan.audit}, "decide": d.state_dict()}

    def verify(state: AnnotateState) -> dict:
        ids, batch = state["batch_ids"], state["batch"]
        ask, audit = routed_rows(state)
        pos = {rid: p for p, rid in enumerate(ids)}
        hints = {rid: {"votes": row_votes(ctx.models, labels, batch, pos[rid]),
                       "uncertainty": batch["uncertainty"][pos[rid]],
                       "majority": majority_label(labels, batch, pos[rid])} for rid in ask + audit}
        # Examples from the store as of this batch's start: a redone batch makes the same prompts.
        examples = (ctx.few_shot.pick(ask + audit, state.get("batch_index", 0), text_of)
                    if ctx.few_shot is not None else None)
        answers, results = ask_verifier(ctx.verifier, [(rid, text_of(rid)) for rid in ask + audit], hints,
                                        examples)
        audit_set = set(audit)
        # A routed row the verifier gave no valid label (None) keeps the models' label as llm_failed.
        verified = {k: v for k, v in answers.items() if int(k) not in audit_set}
        audit_answers = {k: v for k, v in answers.items() if int(k) in audit_set and v is not None}
        prices = ctx.settings.prices

        ask_cost = sum(prices.cost(*_tokens(r)) for r in results if r.row_id not in audit_set)
        paid = [r for r in results if r.row_id in audit_set]
        d = decider(state)
        d.add_audit_usage(sum(not getattr(r, "cached", False) for r in paid), sum(_tokens(r)[0] for r in paid),
                          sum(_tokens(r)[1] for r in paid), sum(prices.cost(*_tokens(r)) for r in paid))
        ctx.on_progress({"event": "verified", "n": len(verified), "audit": len(audit_answers),
                         "pool_size": state.get("pool_size", 0)})
        return {"verified": verified, "audit_answers": audit_answers,
                "routed": {**(state.get("routed") or {}), "cost": ask_cost}, "decide": d.state_dict()}

    def accept(state: AnnotateState) -> dict:
        ids, batch = state["batch_ids"], state["batch"]
        verified, audit_answers = state.get("verified") or {}, state.get("audit_answers") or {}
        d = decider(state)
        # again, with their confidences: a run resumed after the ensemble step has not planned this batch
        d.add_slm_votes(ids, np.asarray(batch["votes"], dtype=np.int64).reshape(len(ids), len(ctx.models)),
                        np.asarray(batch["confidence"], dtype=np.float64).reshape(len(ids), len(ctx.models)))
        decisions = d.settle(ids, {int(k): label_idx.get(v, -1) for k, v in verified.items() if v is not None},
                             {int(k): label_idx.get(v, -1) for k, v in audit_answers.items()},
                             cost=float((state.get("routed") or {}).get("cost", 0.0)),
                             live=[u is not None for u in batch["uncertainty"]], majority=batch["majority"])
        batch_index = state.get("batch_index", 0)
        records = [_record(pos, rid, decisions[rid], verified, audit_answers, batch, batch_index)
                   for pos, rid in enumerate(ids)]
        ctx.store.put_results(records)
        pool = [(r["row_id"], r["label"]) for r in records
                if verified.get(str(r["row_id"])) is not None and r["label"] is not None]
        pool_size = ctx.store.add_to_pool(pool, batch_index) if pool else ctx.store.pool_size()
        if ctx.writer is not None:  # the output as it goes, block by block
            write_finished_blocks(ctx.writer, ctx.store, ids, state["n_rows"])
        ctx.on_progress({"event": "accepted", "n": len(ids), "llm": len(verified), "pool_size": pool_size})
        return {"batch_index": batch_index + 1, "batch_ids": [], "batch": None, "verified": {}, "audit_answers": {},
                "routed": None, "pool_size": pool_size, "decide": d.state_dict()}

    def _record(pos: int, rid: int, dec: Decision, verified: dict, audit_answers: dict, batch, batch_index: int
                ) -> dict:
        if batch["uncertainty"][pos] is None:
            label, source, conf = None, LabelSource.SKIPPED_EMPTY.value, None
        elif str(rid) in verified and verified[str(rid)] is None:  # asked, no valid label: `runs retry-failed`
            label, source, conf = majority_label(labels, batch, pos), LabelSource.LLM_FAILED.value, None
        else:
            label = labels[dec.label] if dec.label >= 0 else None
            source, conf = dec.source, round(dec.confidence, 6)
        llm_label = verified.get(str(rid)) or audit_answers.get(str(rid))
        return {"row_id": rid, "label": label, "label_source": source, "uncertainty": batch["uncertainty"][pos],
                "votes": row_votes(ctx.models, labels, batch, pos), "majority": majority_label(labels, batch, pos),
                "llm_label": llm_label, "batch": batch_index, "confidence": conf, "audit": str(rid) in audit_answers}

    def _relabel(d: OnlineDecider) -> list[int]:
        """Earlier rows' labels under the final model; returns the row ids whose stored record changed.
        Decided and compared with the store block by block (label, source and confidence only), never
        every row at once."""
        changed_ids: list[int] = []
        for block in d.relabel_blocks(FINISH_CHUNK_ROWS):
            if not block:
                continue
            stored = ctx.store.decisions_between(min(block), max(block) + 1)
            updates = []
            for rid, dec in block.items():
                rec = stored.get(rid)
                # asked and no valid label: it stays llm_failed (with its label), for `runs retry-failed`
                if rec is None or rec[1] in (LabelSource.SKIPPED_EMPTY.value, LabelSource.LLM_FAILED.value):
                    continue
                label = labels[dec.label] if dec.label >= 0 else None
                if (label, dec.source) != (rec[0], rec[1]) or rec[2] is None or abs(rec[2] - dec.confidence) > 1e-6:
                    updates.append((rid, label, dec.source, round(dec.confidence, 6)))
            ctx.store.update_decisions(updates)
            changed_ids += [u[0] for u in updates]
        return changed_ids

    def final_fit(state: AnnotateState) -> dict:
        """After the last batch: a round still training ends (its weights vote in ``revote``), and the
        posterior is fitted on every answer; checkpointed before any stored vote changes."""
        update = take_finished_round(state, wait=True)
        d = decider(state)
        d.fit_final()
        return {**update, "decide": d.state_dict()}

    def revote(state: AnnotateState) -> dict:
        """The finishing step: the final trainable models vote again on the rows settled before their
        weights came in (``Settings.final_revote``, calibrated routing), then every row's label follows the
        final posterior. Block by block through the store; re-run after a crash, it casts the same votes."""
        d = decider(state)
        trainable = [j for j, m in enumerate(ctx.models) if isinstance(m, TrainableSLM)]
        upto = int(state.get("weights_from_batch", 0))
        revoted: list[int] = []  # their stored votes changed: the output's blocks holding them are rewritten
        if ctx.settings.final_revote and trainable and upto > 0 and d.revote_due():
            for part in ctx.store.iter_results(FINISH_CHUNK_ROWS):
                rows = [r for r in part if r["batch"] < upto and r["label_source"] == LabelSource.SLM_CONSENSUS.value]
                if rows:
                    _revote_rows(d, rows, trainable)
                    revoted += [int(r["row_id"]) for r in rows]
            ctx.on_progress({"event": "note", "text": f"re-voted {len(revoted)} settled rows with the final "
                                                      f"{', '.join(ctx.models[j].name for j in trainable)}"})
        changed = _relabel(d)
        if ctx.writer is not None:  # the shards already written that hold a changed row
            ctx.writer.rewrite_stored(ctx.store, sorted(set(revoted) | set(changed)))
        return {"decide": d.state_dict()}

    def choose_top_up(state: AnnotateState) -> dict:
        """The reserve's rows (``Settings.final_reserve``): the settled rows the final posterior gains most from
        asking, chosen once and checkpointed, so a run resumed in ``top_up`` asks the same rows (the verifier's
        cache answers those already paid for)."""
        d = decider(state)
        if not d.top_up_due():
            return {"top_up": []}

        def settled_blocks():
            for part in ctx.store.iter_results(FINISH_CHUNK_ROWS):  # audited ones too: see top_up_rows
                yield [int(r["row_id"]) for r in part if r["label_source"] == LabelSource.SLM_CONSENSUS.value
                       and (r.get("audit") or r.get("llm_label") is None)]

        rows = d.top_up_rows(settled_blocks())
        reused = sum(d.is_audited(r) for r in rows)
        ctx.on_progress({"event": "note", "text": f"asking the LLM about {len(rows) - reused} settled rows the final "
                                                  f"posterior is least sure of (the reserve, {d.reserve:.0%} of the cap)"
                                                  + (f"; {reused} audited ones among them are labelled by their audit "
                                                     "answer" if reused else "")})
        return {"top_up": rows}

    def top_up(state: AnnotateState) -> dict:
        """Ask the chosen rows, add the answers to the pool and the vote book, and relabel by the final
        posterior; the output's shards holding a changed row are rewritten."""
        chosen = [int(r) for r in state.get("top_up") or []]
        d = decider(state)
        if chosen:
            stored = {int(r["row_id"]): r for r in ctx.store.results_of(chosen)}
            # From the store, not the decider: a run resumed after a crash in this step finds there what the
            # step had done. An audited row is reused (the relabel below takes it out of the audit sample a
            # resumed decider rebuilds); a row marked llm_failed was asked and failed: not asked again.
            reused = [rid for rid in chosen if stored[rid].get("audit")]
            failed_before = {rid for rid in chosen if stored[rid]["label_source"] == LabelSource.LLM_FAILED.value}
            rows = [rid for rid in chosen if not stored[rid].get("audit") and rid not in failed_before]
            hints = {rid: {"votes": stored[rid]["votes"], "uncertainty": stored[rid]["uncertainty"],
                           "majority": stored[rid]["majority"]} for rid in rows}
            examples = (ctx.few_shot.pick(rows, state.get("batch_index", 0), text_of)
                        if ctx.few_shot is not None else None)
            answers, results = ask_verifier(ctx.verifier, [(rid, text_of(rid)) for rid in rows], hints, examples)
            got = {int(k): v for k, v in answers.items() if v is not None and v in label_idx}
            cost = sum(ctx.settings.prices.cost(*_tokens(r)) for r in results)
            # asked and no valid label, as in a batch: llm_failed, keeping the label it had (`runs retry-failed`)
            failed = [rid for rid in rows if rid not in got]
            ctx.store.update_decisions([(rid, stored[rid]["label"], LabelSource.LLM_FAILED.value, None)
                                        for rid in failed])
            ctx.store.set_llm_labels(sorted(got.items()))
            reused_labels = [(rid, stored[rid]["llm_label"]) for rid in reused if stored[rid].get("llm_label")]
            ctx.store.add_to_pool(sorted(got.items()) + reused_labels, state.get("batch_index", 0))
            d.take_top_up({rid: label_idx[v] for rid, v in got.items()}, asked=len(rows) + len(failed_before),
                          cost=cost, reused=reused)
            changed = _relabel(d)
            if ctx.writer is not None:
                ctx.writer.rewrite_stored(ctx.store, sorted(set(changed) | set(failed)))
            ctx.on_progress({"event": "verified", "n": len(got), "audit": 0, "pool_size": ctx.store.pool_size()})
        return {"top_up": [], "finalized": True, "decide": d.state_dict()}

    def _revote_rows(d: OnlineDecider, rows: list[dict], trainable: list[int]) -> None:
        ids = [int(r["row_id"]) for r in rows]
        book = [_book_row(r) for r in rows]
        votes = [b["slm"] for b in book]
        conf = [b["conf"] for b in book]
        texts = [text_of(rid) for rid in ids]
        for j in trainable:  # rounded as score_batch rounds the votes the loop stores
            pred = ctx.models[j].predict(texts)
            for k, (v, c) in enumerate(zip(pred.votes.tolist(), pred.confidence.tolist())):
                votes[k][j], conf[k][j] = int(v), round(float(c), 4)
        d.revote(ids, np.asarray(votes, dtype=np.int64), np.asarray(conf, dtype=np.float64))
        batch = {"votes": votes, "confidence": conf}
        ctx.store.update_votes([(rid, row_votes(ctx.models, labels, batch, k)) for k, rid in enumerate(ids)])

    def finetune(state: AnnotateState) -> dict:
        round_ = state.get("finetune_round", 0) + 1
        seen = ctx.store.n_results()  # every row so far; the next round's new rows come after these
        if cfg.overlap:  # start it and go on labelling; load_batch swaps its weights in when it is done
            inflight[round_] = start_background_round(ctx.models, labelled_in_order(ctx.store), text_of, labels,
                                                      ctx.settings, round_, RunPaths(ctx.run_dir).models,
                                                      ctx.on_progress, seen_upto=state.get("finetune_seen", 0),
                                                      engine=ctx.engine)
            pending = {"round": round_, "launch_batch": state.get("batch_index", 0),
                       "seen_upto": state.get("finetune_seen", 0)}
            return {"finetune_round": round_, "pool_at_last_finetune": ctx.store.pool_size(),
                    "finetune_seen": seen, "finetune_pending": pending}
        accepted, pool_size = finetune_trainables(ctx.models, ctx.store, text_of, labels, ctx.settings, round_,
                                                  RunPaths(ctx.run_dir).models, ctx.on_progress,
                                                  seen_upto=state.get("finetune_seen", 0), engine=ctx.engine)
        weights = {**(state.get("weights") or {}), **accepted}
        since_batch = {"weights_from_batch": state.get("batch_index", 0)} if accepted else {}
        return {"finetune_round": round_, "pool_at_last_finetune": pool_size, "finetune_seen": seen,
                "weights": weights, **since_batch}

    def report(state: AnnotateState) -> dict:
        # The runner builds the report from the store once the graph has ended: this node marks the
        # end and leaves the decision layer's summary (reliabilities, verdict, audit) in the state.
        update = take_finished_round(state, wait=True)  # a round still training ends the run's last
        ctx.on_progress({"event": "finished", "n_rows": state["n_rows"]})
        return {**update, "finished": True, "decide_summary": decider(state).summary(labels)}

    graph = StateGraph(AnnotateState)
    for name, fn in [("warm_start", warm_start), ("load_batch", load_batch), ("ensemble", ensemble),
                     ("verify", verify), ("accept", accept), ("finetune", finetune), ("final_fit", final_fit),
                     ("revote", revote), ("choose_top_up", choose_top_up), ("top_up", top_up), ("report", report)]:
        graph.add_node(name, _timed(name, fn))
    graph.add_conditional_edges(START, route_start, ["warm_start", "load_batch", "final_fit", "report"])
    graph.add_conditional_edges("warm_start", route_next_batch, ["load_batch", "final_fit", "report"])
    graph.add_edge("load_batch", "ensemble")
    graph.add_conditional_edges("ensemble", route_after_ensemble, ["verify", "accept"])
    graph.add_edge("verify", "accept")
    graph.add_conditional_edges("accept", route_after_accept, ["finetune", "load_batch", "final_fit", "report"])
    graph.add_conditional_edges("finetune", route_next_batch, ["load_batch", "final_fit", "report"])
    graph.add_edge("final_fit", "revote")
    graph.add_edge("revote", "choose_top_up")
    graph.add_edge("choose_top_up", "top_up")
    graph.add_edge("top_up", "report")
    graph.add_edge("report", END)
    return graph.compile(checkpointer=checkpointer)
