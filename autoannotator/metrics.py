"""Label quality against reference labels: the only accuracy, balanced accuracy and F1 in the package.
A missing prediction (None, or -1 for label indices) counts as wrong."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def accuracy(pred: Sequence[Any], gold: Sequence[Any]) -> float | None:
    return sum(p == g for p, g in zip(pred, gold)) / len(gold) if len(gold) else None


def accuracy_counts(pairs: Sequence[tuple[Any, Any]], digits: int = 4) -> dict[str, Any]:
    """{n, correct, accuracy} over (prediction, reference) pairs, as reports show it."""
    n = len(pairs)
    correct = sum(1 for pred, ref in pairs if pred == ref)
    return {"n": n, "correct": correct, "accuracy": round(correct / n, digits) if n else None}


def balanced_accuracy(pred: np.ndarray, ref: np.ndarray) -> float | None:
    """Mean recall over the reference's labels: a constant answer scores 1 / (labels present)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if len(ref) == 0:
        return None
    hit = pred == ref
    return float(np.mean([hit[ref == y].mean() for y in np.unique(ref)]))


def macro_f1(pred: Sequence[str | None], gold: Sequence[str], labels: Sequence[str]) -> float | None:
    """Mean over the labels of F1; labels that appear in neither list are left out."""
    scores = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(pred, gold))
        fp = sum(p == label and g != label for p, g in zip(pred, gold))
        fn = sum(p != label and g == label for p, g in zip(pred, gold))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else None
