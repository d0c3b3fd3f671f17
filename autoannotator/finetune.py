"""Continual fine-tuning of the trainable SLMs on every labelled row, with guards against forgetting.

What a round trains on (``plan_round``): every row labelled so far, weighted. A row the LLM
verified weighs 1; a row the SLMs settled weighs its confidence (the run's posterior when the
record carries one, else the share of the voters that agreed). Rows are handed in processing
order, so "new since the last round" is a position, and the round's cost is set by beta alone:
``round_size_factor * beta`` rows, ``replay_share`` of them a seeded sample of earlier rows and
the rest new rows (verified first; replay fills in when there are fewer). The model continues
from its current weights.

Two slices judge a candidate and are never trained on. The *held-out* slice (a hash of the row
id, topped up from the first rows while the slice is small; a row never changes sides as the
run grows) is LLM-verified rows; when it cannot
judge (no LLM call yet, or a single label in it) held-out settled rows join it. The *forgetting*
slice is the first labelled rows of the run: a candidate that loses more than
``forgetting_margin`` accuracy there is refused, whatever it gained on the held-out slice.

The vote gate is balanced accuracy (recall averaged over the labels in the slice). Hard samples
are skewed: the lexicon scorers miss negative sentiment far more often than positive, so two
thirds of a sentiment pool can be one label. Plain accuracy then rewards a model that collapsed
onto that label (it scores the skew), while balanced accuracy gives any constant answer chance.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoannotator.metrics import accuracy, balanced_accuracy
from autoannotator.config import FinetuneSettings
from autoannotator.slm.base import TrainableSLM

LLM_VERIFIED = "llm_verified"
GUARD_FILE = "guard.json"


# --- which side of the split a row is on ---------------------------------------------------------

def _unit_hash(row_id: int, seed: int, salt: str = "") -> float:
    """A row id's fixed position in [0, 1): the same on every call, every resume, every pool size."""
    digest = hashlib.sha256(f"{seed}:{salt}{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_holdout(row_ids: Sequence[int], cfg: FinetuneSettings, seed: int = 0,
                  fraction: float | None = None) -> tuple[list[int], list[int]]:
    """(train, holdout) row ids, each in the given order; pass them in the order they were labelled.

    A row is held out when its hash falls below the fraction. While that gives fewer than
    ``min_holdout`` rows (at most half of those so far), the next rows are held out as they come.
    Either way a row's side depends only on the rows before it, so as the pool grows no row ever
    changes sides: a trained row never lands in the slice that judges it.
    """
    fraction = cfg.holdout_fraction if fraction is None else fraction
    if fraction <= 0:
        return list(row_ids), []
    train, held = [], []
    for i, rid in enumerate(row_ids):
        if _unit_hash(rid, seed) < fraction or len(held) < min(cfg.min_holdout, (i + 1) // 2):
            held.append(rid)
        else:
            train.append(rid)
    return train, held


# --- labelled rows and their weights -------------------------------------------------------------

@dataclass(frozen=True)
class LabelledRow:
    row_id: int
    label: int  # task-label index
    verified: bool  # the LLM (or a person) gave this label
    weight: float


def agreement_share(votes: dict | None, label: str) -> float | None:
    """Share of the non-abstaining voters that voted ``label`` (None when nobody voted)."""
    cast = [v.get("label") for v in (votes or {}).values() if isinstance(v, dict) and v.get("label") is not None]
    return sum(1 for v in cast if v == label) / len(cast) if cast else None


def row_weight(record: dict, cfg: FinetuneSettings) -> float:
    """1 for a verified row; settled_weight x confidence for a settled one; 0 leaves the row out."""
    if record.get("label_source") == LLM_VERIFIED:
        return 1.0
    if not cfg.train_on_settled:
        return 0.0
    conf = record.get("confidence")
    if conf is None:
        conf = agreement_share(record.get("votes"), record["label"])
    if conf is None or conf < cfg.settled_min_confidence:
        return 0.0
    return round(cfg.settled_weight * float(conf), 6)


def labelled_rows(records: Iterable[dict], label_names: Sequence[str], cfg: FinetuneSettings) -> list[LabelledRow]:
    """The records that can teach (a task label, a positive weight), in the order given."""
    index = {name: i for i, name in enumerate(label_names)}
    out = []
    for rec in records:
        label = rec.get("label")
        if label not in index:
            continue
        weight = row_weight(rec, cfg)
        if weight > 0:
            out.append(LabelledRow(int(rec["row_id"]), index[label], rec.get("label_source") == LLM_VERIFIED, weight))
    return out


# --- one round's plan ----------------------------------------------------------------------------

@dataclass
class RoundPlan:
    train: list[LabelledRow]
    holdout: list[LabelledRow]
    forgetting: list[LabelledRow]
    n_new: int  # rows new since the last round that this round trains on
    n_replay: int  # earlier rows replayed
    n_new_left: int  # new rows over the round's cap (they stay in the pool for later replay)
    n_labelled: int  # trainable rows in the pool (all sides)
    holdout_kind: str  # 'verified', 'verified+settled' or 'settled'
    seen_upto: int  # records covered: the next round's new rows start here
    epochs: int
    summary: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary = {
            "n_new": self.n_new, "n_replay": self.n_replay, "n_new_left": self.n_new_left,
            "n_labelled": self.n_labelled, "n_verified_train": sum(r.verified for r in self.train),
            "train_weight": round(sum(r.weight for r in self.train), 2), "holdout_kind": self.holdout_kind,
            "n_forgetting": len(self.forgetting), "epochs": self.epochs,
        }


def _gate_slice(verified_hold: list[LabelledRow], settled_hold: list[LabelledRow],
                cfg: FinetuneSettings) -> tuple[list[LabelledRow], str]:
    """The verified slice; with the settled slice added where it alone cannot tell labels apart."""
    if len(verified_hold) >= cfg.min_holdout and len({r.label for r in verified_hold}) >= 2:
        return verified_hold, "verified"
    if not verified_hold:
        return settled_hold, "settled"
    return verified_hold + settled_hold, "verified+settled"


def balance(rows: list[LabelledRow], cap: float) -> list[LabelledRow]:
    """The same rows, each label's weights scaled so every label present carries the same total (factors <= cap)."""
    totals: dict[int, float] = {}
    for r in rows:
        totals[r.label] = totals.get(r.label, 0.0) + r.weight
    if len(totals) < 2:
        return rows
    target = sum(totals.values()) / len(totals)
    factor = {y: min(cap, target / t) for y, t in totals.items()}
    return [LabelledRow(r.row_id, r.label, r.verified, round(r.weight * factor[r.label], 6)) for r in rows]


def plan_round(records: Sequence[dict], label_names: Sequence[str], cfg: FinetuneSettings, *, beta: int,
               seen_upto: int, round_: int, seed: int = 0, epochs: int | None = None) -> RoundPlan:
    """What a round trains on and is judged on; ``records`` are every labelled row in processing order.

    ``seen_upto`` is how many of ``records`` earlier rounds covered (0 for the first round);
    ``epochs`` overrides the configured passes (the warm start makes the full recipe's).
    """
    plan = _plan_rows(records, label_names, cfg, beta=beta, seen_upto=seen_upto, round_=round_, seed=seed)
    if epochs is not None:
        plan.epochs = plan.summary["epochs"] = epochs
    if cfg.balance_labels:
        plan.train = balance(plan.train, cfg.balance_cap)
        plan.summary["train_weight"] = round(sum(r.weight for r in plan.train), 2)
    plan.summary["label_shares"] = _label_shares(plan.train, label_names)
    return plan


def _label_shares(rows: list[LabelledRow], label_names: Sequence[str]) -> dict[str, float]:
    """Share of the round's rows per label (before weighting): what a one-sided round looks like in the record."""
    counts = np.bincount([r.label for r in rows], minlength=len(label_names)) if rows else np.zeros(len(label_names))
    return {name: round(float(c) / max(1, len(rows)), 3) for name, c in zip(label_names, counts)}


def _plan_rows(records: Sequence[dict], label_names: Sequence[str], cfg: FinetuneSettings, *, beta: int,
               seen_upto: int, round_: int, seed: int) -> RoundPlan:
    """plan_round's choice of rows, before the epochs override and the label balance."""
    rows = labelled_rows(records, label_names, cfg)
    position = {int(rec["row_id"]): i for i, rec in enumerate(records)}
    _, v_hold = split_holdout([r.row_id for r in rows if r.verified], cfg, seed)
    _, s_hold = split_holdout([r.row_id for r in rows if not r.verified], cfg, seed,
                              fraction=cfg.settled_holdout_fraction)
    held = set(v_hold) | set(s_hold)
    train_side = [r for r in rows if r.row_id not in held]
    holdout, kind = _gate_slice([r for r in rows if r.row_id in set(v_hold)],
                                [r for r in rows if r.row_id in set(s_hold)], cfg)
    forgetting = train_side[:cfg.forgetting_rows]
    rng = np.random.default_rng([seed, round_])
    if not cfg.incremental:
        return RoundPlan(train_side, holdout, forgetting, len(train_side), 0, 0, len(rows), kind,
                         len(records), cfg.epochs)
    new = [r for r in train_side if position[r.row_id] >= seen_upto]
    old = [r for r in train_side if position[r.row_id] < seen_upto]
    size = max(1, math.ceil(cfg.round_size_factor * beta))
    # replay_share of the round is replayed; when fewer new rows than the rest exist, replay fills up
    n_replay = min(len(old), max(round(size * cfg.replay_share), size - len(new)))
    chosen = _take_new(new, size - n_replay, rng)
    replay = [old[i] for i in sorted(rng.choice(len(old), size=n_replay, replace=False))] if n_replay else []
    return RoundPlan(replay + chosen, holdout, forgetting, len(chosen), n_replay, len(new) - len(chosen),
                     len(rows), kind, len(records), cfg.incremental_epochs)


def _take_new(new: list[LabelledRow], cap: int, rng: np.random.Generator) -> list[LabelledRow]:
    """All new rows when they fit; else every verified row first, then a seeded sample of the settled ones."""
    if len(new) <= cap:
        return new
    verified = [r for r in new if r.verified]
    settled = [r for r in new if not r.verified]
    if len(verified) >= cap:
        keep = sorted(rng.choice(len(verified), size=cap, replace=False))
        return [verified[i] for i in keep]
    keep = set(rng.choice(len(settled), size=cap - len(verified), replace=False).tolist())
    picked = {r.row_id for r in verified} | {settled[i].row_id for i in keep}
    return [r for r in new if r.row_id in picked]


def as_arrays(rows: Sequence[LabelledRow], text_of: Callable[[int], str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, label indices, weights) for a list of rows."""
    return ([text_of(r.row_id) for r in rows], np.array([r.label for r in rows], dtype=np.int64),
            np.array([r.weight for r in rows], dtype=np.float32))


# --- scoring and the guard -----------------------------------------------------------------------

def holdout_scores(model: TrainableSLM, texts: Sequence[str], labels: np.ndarray) -> tuple[float | None, float | None]:
    """(accuracy, balanced accuracy) against the given labels; an abstention is wrong."""
    if len(texts) == 0:
        return None, None
    labels = np.asarray(labels)
    votes = model.predict_ungated(texts).votes
    return round(float(accuracy(votes, labels)), 4), round(float(balanced_accuracy(votes, labels)), 4)


def chance_level(labels: np.ndarray) -> float | None:
    """Balanced accuracy of any constant answer: 1 / the number of labels in the slice (what a useless model scores)."""
    return round(1.0 / len(np.unique(labels)), 4) if len(labels) else None


def vote_margin(n_holdout: int, cfg: FinetuneSettings) -> float:
    """How far above chance a model must score to vote: the configured margin, or two standard errors.

    An accuracy measured on n samples wanders by about 0.5 / sqrt(n) around its true value (at its
    widest, p = 0.5), so on a 20-sample slice a model at chance scores 0.61 one time in six. The
    first pools are that small when beta is; the vote then waits for a slice that can show it.
    """
    if not n_holdout:
        return cfg.rejoin_margin
    return max(cfg.rejoin_margin, cfg.rejoin_standard_errors * 0.5 / math.sqrt(n_holdout))


def save_trained(model: TrainableSLM, path: Path) -> None:
    model.save(path)
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / GUARD_FILE).write_text(json.dumps({"qualified": model.qualified}))


def load_trained(model: TrainableSLM, path: Path) -> None:
    model.load(path)
    guard = Path(path) / GUARD_FILE
    model.qualified = json.loads(guard.read_text())["qualified"] if guard.exists() else True


Slice = tuple[list[str], np.ndarray]


def finetune_model(
    model: TrainableSLM,
    train: tuple[list[str], np.ndarray] | tuple[list[str], np.ndarray, np.ndarray],
    holdout: Slice,
    cfg: FinetuneSettings,
    round_: int,
    save_dir: Path,
    *,
    forgetting: Slice | None = None,
    epochs: int | None = None,
    plan: dict | None = None,
) -> tuple[TrainableSLM, dict]:
    """Train a copy from the current weights; return (the model to use from now on, the round's record).

    ``train`` is (texts, labels) or (texts, labels, sample weights). The copy replaces the model
    only if it labels the held-out slice at least as well (balanced accuracy) and loses at most
    ``forgetting_margin`` accuracy on the forgetting slice.
    """
    start = time.perf_counter()
    texts, labels = train[0], train[1]
    weights = train[2] if len(train) > 2 else None
    acc_before, before = holdout_scores(model, *holdout)
    forget_before, _ = holdout_scores(model, *forgetting) if forgetting else (None, None)
    candidate = model.clone()
    train_start = time.perf_counter()
    metrics = candidate.train_on(texts, labels, cfg, sample_weight=weights, epochs=epochs)
    train_seconds = time.perf_counter() - train_start
    acc_after, after = holdout_scores(candidate, *holdout)
    forget_after, _ = holdout_scores(candidate, *forgetting) if forgetting else (None, None)
    holds_up = before is None or (after is not None and after >= before)
    forgets = forget_before is not None and forget_after is not None \
        and forget_after < forget_before - cfg.forgetting_margin
    accepted = holds_up and not forgets
    chance = chance_level(holdout[1])
    required = None if chance is None else round(chance + vote_margin(len(holdout[1]), cfg), 4)
    # On a slice with a single label chance is 1.0, so with any margin it qualifies no one: it cannot
    # tell a model from a constant answer.
    qualified = required is None or (after is not None and after >= required)
    record = {
        "round": round_,
        "model": model.name,
        "n_train": len(texts),
        "n_holdout": len(holdout[0]),
        "holdout_acc_before": acc_before,
        "holdout_acc_after": acc_after,
        "holdout_balanced_acc_before": before,
        "holdout_balanced_acc_after": after,
        "forgetting_n": len(forgetting[0]) if forgetting else 0,
        "forgetting_acc_before": forget_before,
        "forgetting_acc_after": forget_after,
        "accepted": accepted,
        "rejected_for": None if accepted else ("forgetting" if holds_up else "holdout"),
        "holdout_chance": chance,
        "holdout_required": required,
        "votes": qualified if accepted else model.qualified,
        "train_metrics": metrics,
        "train_seconds": round(train_seconds, 3),
        "seconds": 0.0,
        "weights": None,
        **({"plan": plan} if plan else {}),
    }
    if accepted:
        candidate.qualified = qualified
        path = Path(save_dir) / f"round-{round_}" / model.name
        save_trained(candidate, path)
        record["weights"] = str(path)
    record["seconds"] = round(time.perf_counter() - start, 2)
    return (candidate if accepted else model), record


@dataclass
class RoundData:
    """A plan's rows as texts and arrays: everything a round needs, so it can train away from the run's data."""

    train: tuple[list[str], np.ndarray, np.ndarray]
    holdout: Slice
    forgetting: Slice | None
    epochs: int
    summary: dict


def round_data(plan: RoundPlan, text_of: Callable[[int], str]) -> RoundData:
    """Read the plan's texts now (``text_of`` may read the data source, which is not for another thread)."""
    hold_t, hold_y, _ = as_arrays(plan.holdout, text_of)
    forget_t, forget_y, _ = as_arrays(plan.forgetting, text_of)
    return RoundData(as_arrays(plan.train, text_of), (hold_t, hold_y),
                     (forget_t, forget_y) if plan.forgetting else None, plan.epochs, plan.summary)


def train_round(model: TrainableSLM, data: RoundData, cfg: FinetuneSettings, round_: int,
                save_dir: Path) -> tuple[TrainableSLM, dict]:
    """``finetune_model`` on a round's data: safe to run in a background thread on a model no one else uses."""
    return finetune_model(model, data.train, data.holdout, cfg, round_, save_dir, forgetting=data.forgetting,
                          epochs=data.epochs, plan=data.summary)


def run_round(model: TrainableSLM, plan: RoundPlan, text_of: Callable[[int], str], cfg: FinetuneSettings,
              round_: int, save_dir: Path) -> tuple[TrainableSLM, dict]:
    """``finetune_model`` on a ``plan_round`` plan; ``text_of`` maps a row id to its text."""
    return train_round(model, round_data(plan, text_of), cfg, round_, save_dir)


def finetune_summary(records: Sequence[dict]) -> dict[str, dict]:
    """Per trainable model: when it first voted, and what its first and last rounds cost.

    ``first_vote_rows_labelled`` counts the rows labelled before that round (0 for a warm start:
    the model votes from the first batch). The seconds are each round's whole cost (training plus
    scoring the judging slices), the figure the O(beta) rule keeps flat.
    """
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["model"] for r in records):
        mine = sorted((r for r in records if r["model"] == name), key=lambda r: r["round"])
        voting = next((r for r in mine if r.get("accepted") and r.get("votes")), None)
        first, last = mine[0], mine[-1]
        out[name] = {
            "rounds": len(mine),
            "rejected": sum(1 for r in mine if not r.get("accepted")),
            "first_vote_round": voting["round"] if voting else None,
            "first_vote_rows_labelled": voting.get("rows_labelled") if voting else None,
            "first_round_seconds": first.get("seconds"),
            "last_round_seconds": last.get("seconds"),
            "last_over_first": round(last["seconds"] / first["seconds"], 3) if first.get("seconds") else None,
            "total_seconds": round(sum(r.get("seconds") or 0.0 for r in mine), 2),
        }
    return out
