"""The one implementation of each step of the annotation loop.

The graph's nodes (``graphs/annotate.py``) and the chat's loop tools (``run_ensemble``,
``verify_samples``, ``launch_finetune`` in ``tools/loop_tools.py``) call these functions, so a step
run from chat is the same step the loop runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoannotator.config import Settings
from autoannotator.engine.base import Engine
from autoannotator.finetune import RoundData, plan_round, round_data, train_round
from autoannotator.ensemble import BatchVotes, run_ensemble
from autoannotator.run.store import RunStore
from autoannotator.slm.base import SLM, TrainableSLM
from autoannotator.task import LabelSource
from autoannotator.verify.base import Example, ExampleVerifier, HintedVerifier, Verifier


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


def ask_verifier(verifier: Verifier, items: list[tuple[int, str]],
                 hints: dict[int, dict] | None = None,
                 examples: Mapping[int, Sequence[Example]] | None = None) -> tuple[dict[str, str | None], list[Any]]:
    """Ask the verifier about ``items``: (row id as text -> label, None where it gave no valid label
    after its attempts; the raw results, for their usage). ``examples``: few-shot examples per row id,
    for a verifier whose prompt shows them (none given: its zero-shot prompt)."""
    if hints and isinstance(verifier, HintedVerifier):  # a human sees the SLM votes next to each sample
        verifier.set_hints(hints)
    if isinstance(verifier, ExampleVerifier):  # always set: no example of an earlier call may linger
        verifier.set_examples(examples or {})
    results = list(verifier.verify(items)) if items else []
    # A failed row maps to None: it keeps the models' label (llm_failed) and stays out of the pool.
    return {str(r.row_id): (None if getattr(r, "failed", False) else r.label) for r in results}, results


def verify_rows(verifier: Verifier, store: RunStore, items: list[tuple[int, str]], batch_index: int,
                hints: dict[int, dict] | None = None) -> tuple[dict[str, str], int]:
    """Ask the verifier about ``items``; its answers join the hard-sample pool.
    Returns (row id as text -> label, the pool's size)."""
    verified, _ = ask_verifier(verifier, items, hints)
    pool_size = store.add_to_pool([(int(k), v) for k, v in verified.items() if v is not None], batch_index)
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
        elif llm_label is None and str(rid) in verified:  # asked, no valid label: `runs retry-failed`
            label, source = majority, LabelSource.LLM_FAILED
        elif llm_label is not None:
            label, source = llm_label, LabelSource.LLM_VERIFIED
        else:
            label, source = majority, LabelSource.SLM_CONSENSUS
        records.append({"row_id": rid, "label": label, "label_source": source.value, "uncertainty":
                        batch["uncertainty"][pos], "votes": row_votes(models, labels, batch, pos),
                        "majority": majority, "llm_label": llm_label, "batch": batch_index})
    return records


def train_on_records(models: list[SLM], records: Sequence[dict], text_of: Callable[[int], str],
                     labels: Sequence[str], settings: Settings, round_: int, models_dir: Path, store: RunStore, *,
                     seen_upto: int = 0, kind: str = "incremental",
                     on_progress: Callable[[dict], None] = lambda event: None,
                     engine: Engine | None = None) -> dict[str, str]:
    """One round for every trainable model on ``records`` (labelled rows in processing order).

    ``finetune.plan_round`` picks the rows and weights (everything labelled, O(beta) per round),
    ``finetune.plan_round`` picks the rows and weights (everything labelled, O(beta) per round),
    ``finetune.train_round`` trains from the current weights and guards the result (where the engine
    runs it: this process, or a Ray worker). Replaces accepted models in ``models`` in place; returns
    model name -> accepted weights.
    """
    train = engine.train_round if engine is not None else train_round
    results = []
    for i, data in _round_inputs(models, records, text_of, labels, settings, round_, seen_upto, kind, on_progress):
        results.append((i, *train(models[i], data, settings.finetune, round_, models_dir)))
    return _keep_round(models, results, store, kind, 0 if kind == "warm_start" else len(records), on_progress)


def _round_inputs(models: Sequence[SLM], records: Sequence[dict], text_of: Callable[[int], str],
                  labels: Sequence[str], settings: Settings, round_: int, seen_upto: int, kind: str,
                  on_progress: Callable[[dict], None]) -> list[tuple[int, RoundData]]:
    """(model index, the round's texts and arrays) per trainable model: the part of a round that reads the data."""
    out = []
    for i, model in enumerate(models):
        if not isinstance(model, TrainableSLM):
            continue
        plan = plan_round(records, labels, settings.finetune, beta=settings.beta, seen_upto=seen_upto,
                          round_=round_, seed=settings.seed,
                          epochs=settings.finetune.warm_start_epochs if kind == "warm_start" else None)
        on_progress({"event": "finetune_start", "model": model.name, "round": round_, "n": len(plan.train)})
        out.append((i, round_data(plan, text_of)))
    return out


def _keep_round(models: list[SLM], results: Sequence[tuple[int, TrainableSLM, dict]], store: RunStore, kind: str,
                rows_labelled: int, on_progress: Callable[[dict], None], extra: dict | None = None) -> dict[str, str]:
    """Put each model the guard kept into ``models`` and record its round; returns model name -> accepted weights."""
    weights: dict[str, str] = {}
    for i, kept, record in results:
        record["kind"] = kind
        record["rows_labelled"] = rows_labelled
        record.update(extra or {})
        if record["accepted"]:
            models[i] = kept
        if record["weights"]:
            weights[kept.name] = record["weights"]
        store.put_finetune_record(record["round"], kept.name, record)
        on_progress({"event": "finetune_done", **record})
    return weights


@dataclass
class BackgroundRound:
    """A beta-branch round training in a thread while the loop labels on with the current weights.

    The thread trains copies (``clone``) of the trainable models on texts read beforehand, so it
    shares nothing with the loop but the CPU: no model, tokenizer, store or data reader. Its results
    wait in ``results`` until the loop takes them at a batch boundary (``finish_background_round``).
    """

    round_: int
    kind: str
    n_records: int
    started: float
    thread: threading.Thread | None = None
    results: list[tuple[int, TrainableSLM, dict]] = field(default_factory=list)
    error: BaseException | None = None

    def done(self) -> bool:
        return self.thread is None or not self.thread.is_alive()

    def wait(self) -> float:
        """Block until the round has ended; returns the seconds waited. A failure in the thread is raised here."""
        start = time.perf_counter()
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error
        return time.perf_counter() - start


def start_background_round(models: Sequence[SLM], records: Sequence[dict], text_of: Callable[[int], str],
                           labels: Sequence[str], settings: Settings, round_: int, models_dir: Path,
                           on_progress: Callable[[dict], None] = lambda event: None, *,
                           seen_upto: int = 0, engine: Engine | None = None) -> BackgroundRound:
    """Plan the round and read its texts here, then train in a daemon thread (torch releases the GIL).

    A daemon thread dies with the process: a round in flight at a crash leaves nothing behind but
    maybe a weights folder no state points to, and a resumed run simply trains it again.
    """
    kind = "incremental" if settings.finetune.incremental else "full"
    inputs = [(i, models[i].clone(), data) for i, data in
              _round_inputs(models, records, text_of, labels, settings, round_, seen_upto, kind, on_progress)]
    bg = BackgroundRound(round_, kind, len(records), time.perf_counter())
    train = engine.train_round if engine is not None else train_round  # a Ray engine: the round on a worker

    def work() -> None:
        try:
            for i, twin, data in inputs:
                bg.results.append((i, *train(twin, data, settings.finetune, round_, models_dir)))
        except BaseException as exc:  # handed to the loop's thread by wait()
            bg.error = exc

    bg.thread = threading.Thread(target=work, name=f"finetune-round-{round_}", daemon=True)
    bg.thread.start()
    return bg


def finish_background_round(bg: BackgroundRound, models: list[SLM], store: RunStore,
                            on_progress: Callable[[dict], None] = lambda event: None, *,
                            overlap: dict | None = None) -> tuple[dict[str, str], float]:
    """Wait for the round if it is still training, swap in what the guard kept, write its records.
    Returns (model name -> accepted weights, the seconds the loop waited)."""
    waited = bg.wait()
    info = {**(overlap or {}), "wait_seconds": round(waited, 3),
            "wall_seconds": round(time.perf_counter() - bg.started, 3)}
    return _keep_round(models, bg.results, store, bg.kind, bg.n_records, on_progress, {"overlap": info}), waited


def labelled_in_order(store: RunStore, before_batch: int | None = None) -> list[dict[str, Any]]:
    """The store's rows in the order the loop labelled them (batch by batch; a round falls between batches).
    ``before_batch``: only the batches before it (what a round begun there saw, when a resume trains it again)."""
    rows = store.results() if before_batch is None else store.results_in_batches(0, before_batch)
    return sorted(rows, key=lambda r: (r["batch"], r["row_id"]))


def finetune_trainables(models: list[SLM], store: RunStore, text_of: Callable[[int], str], labels: Sequence[str],
                        settings: Settings, round_: int, models_dir: Path,
                        on_progress: Callable[[dict], None] = lambda event: None, *,
                        seen_upto: int = 0, engine: Engine | None = None) -> tuple[dict[str, str], int]:
    """The beta branch in line: a round on everything labelled so far; rows past ``seen_upto`` (in labelling
    order) are new. Returns (model name -> accepted weights, the hard-sample pool's size)."""
    kind = "incremental" if settings.finetune.incremental else "full"
    weights = train_on_records(models, labelled_in_order(store), text_of, labels, settings, round_, models_dir,
                               store, seen_upto=seen_upto, kind=kind, on_progress=on_progress, engine=engine)
    return weights, store.pool_size()


def warm_start_records(models: Sequence[SLM], row_ids: Sequence[int], text_of: Callable[[int], str],
                       labels: Sequence[str], settings: Settings) -> list[dict[str, Any]]:
    """The frozen models' confident agreements among ``row_ids``, as settled records (no LLM involved)."""
    frozen = [m for m in models if not isinstance(m, TrainableSLM)]
    if not frozen or not row_ids:
        return []
    out = run_ensemble(frozen, [text_of(i) for i in row_ids], len(labels), settings.min_votes)
    cfg = settings.finetune
    records = []
    for j, rid in enumerate(row_ids):
        top = int(out.majority[j])
        if top < 0 or out.n_votes[j] < settings.min_votes or 1.0 - out.uncertainty[j] < cfg.warm_start_min_confidence:
            continue
        votes = {m.name: {"label": labels[v] if v >= 0 else None} for m, v in zip(frozen, out.votes[j])}
        records.append({"row_id": int(rid), "label": labels[top], "label_source": LabelSource.SLM_CONSENSUS.value,
                        "votes": votes})
    return records
