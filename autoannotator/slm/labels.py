"""Synonyms for the label names models on the hub actually use, so their outputs land on task labels.

Hub models name the same idea many ways ("POS", "positive", "5 stars"; "non-toxic", "neutral",
"not toxic"). ``build_mapping`` resolves each native label to a task label: same name first
(``LabelMapping.by_name``), else the first task label in a synonym group the native label
belongs to. Opaque names such as ``LABEL_0`` are never guessed: they stay unmapped unless the
caller gives an explicit override, because a wrong guess would silently flip votes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from autoannotator.slm.base import LabelMapping

# Ordered: where a native name sits in several groups, the first group that contains one of
# the task's labels wins. NATIVE_ONLY names are how some models say it, but are never targets:
# s-nlp/roberta_toxicity_classifier calls its clean class "neutral", yet a sentiment task's
# "neutral" must not receive a profanity filter's "non-toxic" votes.
SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("positive", "pos", "good", "favorable", "favourable", "4 stars", "5 stars", "4 star", "5 star"),
    ("negative", "neg", "bad", "unfavorable", "unfavourable", "1 star", "2 stars", "1 stars", "2 star"),
    ("neutral", "neu", "3 stars", "3 star"),
    ("toxic", "toxicity", "tox", "offensive", "profane", "profanity", "abusive", "hate", "hateful",
     "insult", "obscene", "severe toxic"),
    ("non-toxic", "not toxic", "nontoxic", "clean", "non-offensive", "not offensive",
     "nothate", "not hate", "normal", "safe", "ok"),
)
NATIVE_ONLY: dict[str, str] = {"neutral": "non-toxic"}  # native name -> a group it may also mean


def _norm(name: str) -> str:
    """Case, spaces, hyphens and underscores do not distinguish labels ("Non_Toxic" == "non-toxic")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


_GROUPS = [[_norm(n) for n in group] for group in SYNONYM_GROUPS]
_ALIASES = {_norm(k): _norm(v) for k, v in NATIVE_ONLY.items()}


def synonym_target(native: str, task_labels: Sequence[str]) -> str | None:
    """The task label a native label means, or None when nothing in the task fits."""
    by_norm = {_norm(t): t for t in task_labels}
    key = _norm(native)
    if key in by_norm:
        return by_norm[key]
    alias = _ALIASES.get(key)
    for group in _GROUPS:
        if key in group or alias in group:
            for member in group:
                if member in by_norm:
                    return by_norm[member]
    return None


def build_mapping(native_labels: Sequence[str], task_labels: Sequence[str],
                  override: Mapping[str, str | None] | None = None) -> LabelMapping:
    """Name/synonym mapping, then ``override`` (native -> task label or None) on top; validated."""
    synonyms = {n: t for n in native_labels if (t := synonym_target(n, task_labels)) is not None}
    auto = LabelMapping.by_name(native_labels, task_labels, synonyms=synonyms)
    if not override:
        return auto
    mapping = dict(auto.mapping)
    mapping.update(override)
    return LabelMapping(native_labels=list(native_labels), task_labels=list(task_labels), mapping=mapping)


def guess_kind(native_labels: Sequence[str]) -> str:
    """'toxicity', 'sentiment' or 'other', from what a model's labels can say (for catalog reports)."""
    tox = build_mapping(native_labels, ["toxic", "non-toxic"]).covered_task_labels
    if "toxic" in tox:
        return "toxicity"
    senti = build_mapping(native_labels, ["positive", "negative", "neutral"]).covered_task_labels
    if len({"positive", "negative"} & set(senti)) == 2:
        return "sentiment"
    return "other"
