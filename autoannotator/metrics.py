"""Label quality against gold labels. A missing prediction (None) counts as wrong."""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(pred: Sequence[str | None], gold: Sequence[str]) -> float | None:
    return sum(p == g for p, g in zip(pred, gold)) / len(gold) if gold else None


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
