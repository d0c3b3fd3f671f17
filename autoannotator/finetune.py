"""Continual fine-tuning of the trainable SLMs on the hard-sample pool, with a guard against forgetting.

A deterministic slice of the LLM-verified pool is held out and never trained on. A fine-tuned
copy replaces the model only if it labels that slice at least as well as the current weights.

"As well" is balanced accuracy (recall averaged over the labels in the slice). Hard samples are
skewed: the lexicon scorers miss negative sentiment far more often than positive, so two thirds of
a sentiment pool can be one label. Plain accuracy then rewards a model that collapsed onto that
label (it scores the skew), while balanced accuracy gives any constant answer exactly chance.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autoannotator.metrics import accuracy, balanced_accuracy
from autoannotator.config import FinetuneSettings
from autoannotator.slm.base import TrainableSLM


def split_holdout(row_ids: Sequence[int], cfg: FinetuneSettings, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, holdout) row ids. Ranked by a hash of the row id, so a row keeps its side as the pool grows."""
    ranked = sorted(row_ids, key=lambda rid: hashlib.sha256(f"{seed}:{rid}".encode()).digest())
    n_hold = max(cfg.min_holdout, int(round(cfg.holdout_fraction * len(ranked)))) if cfg.holdout_fraction > 0 else 0
    n_hold = min(n_hold, len(ranked) // 2)
    holdout = set(ranked[:n_hold])
    return [r for r in row_ids if r not in holdout], [r for r in row_ids if r in holdout]


GUARD_FILE = "guard.json"


def holdout_scores(model: TrainableSLM, texts: Sequence[str], labels: np.ndarray) -> tuple[float | None, float | None]:
    """(accuracy, balanced accuracy) against the LLM's labels on the held-out slice; an abstention is wrong."""
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


def finetune_model(
    model: TrainableSLM,
    train: tuple[list[str], np.ndarray],
    holdout: tuple[list[str], np.ndarray],
    cfg: FinetuneSettings,
    round_: int,
    save_dir: Path,
) -> tuple[TrainableSLM, dict]:
    """Train a copy; return (the model to use from now on, the round's record)."""
    start = time.perf_counter()
    acc_before, before = holdout_scores(model, *holdout)
    candidate = model.clone()
    metrics = candidate.train_on(train[0], train[1], cfg)
    acc_after, after = holdout_scores(candidate, *holdout)
    accepted = before is None or (after is not None and after >= before)
    chance = chance_level(holdout[1])
    required = None if chance is None else round(chance + vote_margin(len(holdout[1]), cfg), 4)
    # On a slice with a single label chance is 1.0, so with any margin it qualifies no one: it cannot
    # tell a model from a constant answer.
    qualified = required is None or (after is not None and after >= required)
    record = {
        "round": round_,
        "model": model.name,
        "n_train": len(train[0]),
        "n_holdout": len(holdout[0]),
        "holdout_acc_before": acc_before,
        "holdout_acc_after": acc_after,
        "holdout_balanced_acc_before": before,
        "holdout_balanced_acc_after": after,
        "accepted": accepted,
        "holdout_chance": chance,
        "holdout_required": required,
        "votes": qualified if accepted else model.qualified,
        "train_metrics": metrics,
        "seconds": round(time.perf_counter() - start, 2),
        "weights": None,
    }
    if not accepted:
        return model, record
    candidate.qualified = qualified
    path = Path(save_dir) / f"round-{round_}" / model.name
    save_trained(candidate, path)
    record["weights"] = str(path)
    return candidate, record
