"""Run k SLMs over a batch and turn their votes into a majority label and the paper's uncertainty.

U(x) = 1 - max_y count(y) / n, where n counts the models that did not abstain. With fewer than
``min_votes`` non-abstaining models the sample has no usable consensus: U = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from autoannotator.slm.base import SLM


class BatchVotes(TypedDict):
    """One batch's votes as the graph checkpoints them (JSON-serialisable)."""

    votes: list[list[int]]  # per row, per model: task-label index, -1 = abstain
    confidence: list[list[float]]
    majority: list[int]
    uncertainty: list[float | None]  # None: empty text, nothing to label


@dataclass
class EnsembleOutput:
    votes: np.ndarray  # (n, k) task-label index per model, -1 = abstain
    confidence: np.ndarray  # (n, k) probability of each model's vote
    majority: np.ndarray  # (n,) task-label index, -1 when nobody voted
    uncertainty: np.ndarray  # (n,) U(x) in [0, 1]
    n_votes: np.ndarray  # (n,) non-abstaining models


def tally(votes: np.ndarray, n_labels: int, min_votes: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Majority label, U(x) and vote count for a (n, k) vote matrix; vectorised, no per-sample loop.

    Ties go to the lowest label index; any tie has U >= 0.5, so it is routed as hard anyway
    unless epsilon is set above that.
    """
    n = votes.shape[0]
    counts = np.zeros((n, n_labels), dtype=np.int64)
    rows, cols = np.nonzero(votes >= 0)
    np.add.at(counts, (rows, votes[rows, cols]), 1)
    n_votes = counts.sum(axis=1)
    top = counts.max(axis=1) if n_labels else np.zeros(n, dtype=np.int64)
    majority = np.where(n_votes > 0, counts.argmax(axis=1), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        uncertainty = np.where(n_votes >= max(min_votes, 1), 1.0 - top / np.maximum(n_votes, 1), 1.0)
    return majority.astype(np.int64), uncertainty.astype(np.float64), n_votes


def is_hard(uncertainty: np.ndarray | float, epsilon: float) -> np.ndarray | bool:
    """The paper's routing rule: U(x) >= epsilon goes to the LLM."""
    return np.asarray(uncertainty) >= epsilon if not np.isscalar(uncertainty) else uncertainty >= epsilon


def run_ensemble(models: Sequence[SLM], texts: Sequence[str], n_labels: int, min_votes: int = 1) -> EnsembleOutput:
    preds = [m.predict(texts) for m in models]
    if preds:
        votes = np.stack([p.votes for p in preds], axis=1)
        confidence = np.stack([p.confidence for p in preds], axis=1)
    else:
        votes = np.full((len(texts), 0), -1, dtype=np.int64)
        confidence = np.zeros((len(texts), 0), dtype=np.float32)
    majority, uncertainty, n_votes = tally(votes, n_labels, min_votes)
    return EnsembleOutput(votes, confidence, majority, uncertainty, n_votes)
