"""Continual fine-tuning of the trainable SLMs on the hard-sample pool, with a guard against forgetting.

A deterministic slice of the LLM-verified pool is held out and never trained on. A fine-tuned
copy replaces the model only if it labels that slice at least as well as the current weights.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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


def holdout_accuracy(model: TrainableSLM, texts: Sequence[str], labels: np.ndarray) -> float | None:
    """Share of the held-out slice the model labels as the LLM did; an abstention counts as wrong."""
    if len(texts) == 0:
        return None
    return float((model.predict_ungated(texts).votes == labels).mean())


def majority_baseline(labels: np.ndarray) -> float | None:
    """Accuracy of always answering the slice's most common label: what a useless model scores."""
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else None


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
    before = holdout_accuracy(model, *holdout)
    candidate = model.clone()
    metrics = candidate.train_on(train[0], train[1], cfg)
    after = holdout_accuracy(candidate, *holdout)
    accepted = before is None or (after is not None and after >= before)
    baseline = majority_baseline(holdout[1])
    qualified = baseline is None or (after is not None and after >= baseline + cfg.rejoin_margin)
    record = {
        "round": round_,
        "model": model.name,
        "n_train": len(train[0]),
        "n_holdout": len(holdout[0]),
        "holdout_acc_before": before,
        "holdout_acc_after": after,
        "accepted": accepted,
        "holdout_majority_baseline": baseline,
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
