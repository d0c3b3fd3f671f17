"""One result schema for every model a search can find, and the relevance score that ranks them.

Hub, cache, local folder and packaged scorer all become a ``ModelCandidate``, so the LLM reads
one shape whether the machine is online or not. Relevance, in [0, 1]:

    0.5 * label coverage  +  0.3 * query overlap  +  0.2 * popularity

label coverage: share of the task's labels the model's labels map onto (``slm.labels`` synonyms;
"POS" counts for "positive", opaque "LABEL_0" counts for nothing). It weighs most because a
model that cannot say the task's labels cannot vote, however popular.
query overlap: share of the query's content words found in the id, tags, datasets or card.
popularity: log10(downloads + 1) / 7, capped at 1 (10M downloads = 1); 0 offline, where the
counts are unknown, so offline ranking rests on labels and words alone.
A model whose card names languages that exclude the requested one is halved, not dropped: the
caller may still want it. The trainable student's coverage is halved too: it covers every label
by construction but votes only after fine-tuning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from autoannotator.slm.labels import build_mapping

Source = Literal["hub", "hf-cache", "local-dir", "packaged"]
W_LABELS, W_QUERY, W_POPULARITY = 0.5, 0.3, 0.2

# Words that describe any labelling request and so say nothing about which model fits it.
_STOP = frozenset("""a an and are as at be by each for from in into is it its of on or that the these this those to
with whether which label labels labelled labeled labelling labeling annotate annotation classify classifier
classification categorize categorise model models task text texts data dataset sample samples row rows
please using use""".split())


class ModelCandidate(BaseModel):
    id: str = Field(description="hub id, folder path or packaged scorer name")
    spec: str = Field(description="what to put in settings.models to use it")
    source: Source
    pipeline_tag: str | None = None
    labels: list[str] = Field(default_factory=list, description="the model's own labels (config.json id2label)")
    covers: list[str] = Field(default_factory=list, description="task labels those labels map onto")
    downloads: int | None = None
    likes: int | None = None
    parameters: int | None = None
    size_bytes: int | None = Field(None, description="bytes of weights (or lexicon) where parameters are unknown")
    license: str | None = None
    languages: list[str] = Field(default_factory=list)
    trainable: bool = False
    relevance: float = 0.0
    note: str | None = None


def content_words(text: str) -> list[str]:
    """Lower-case words of 3+ characters that are not generic labelling vocabulary, in order."""
    seen: dict[str, None] = {}
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if len(word) >= 3 and word not in _STOP:
            seen.setdefault(word)
    return list(seen)


def _tokens(texts: Iterable[str | None]) -> set[str]:
    return {t for text in texts if text for t in re.findall(r"[a-z0-9]+", str(text).lower())}


def _matches(word: str, tokens: set[str]) -> bool:
    """Equal, or sharing a 5-letter stem ("toxicity" ~ "toxic", "reviews" ~ "review")."""
    if word in tokens:
        return True
    stem = word[:5]
    return len(word) >= 5 and any(len(t) >= 5 and t[:5] == stem for t in tokens)


def query_overlap(words: Sequence[str], haystack: Iterable[str | None]) -> float:
    if not words:
        return 0.0
    tokens = _tokens(haystack)
    return sum(_matches(w, tokens) for w in words) / len(words)


def coverage(native_labels: Sequence[str], task_labels: Sequence[str]) -> list[str]:
    if not native_labels or not task_labels:
        return []
    return build_mapping(native_labels, task_labels).covered_task_labels


def language_ok(languages: Sequence[str], wanted: str | None) -> bool:
    if not wanted or not languages:
        return True  # unknown is not a mismatch
    have = {lang.lower() for lang in languages}
    return wanted.lower() in have or "multilingual" in have


def score(cand: ModelCandidate, task_labels: Sequence[str], words: Sequence[str], haystack: Iterable[str | None],
          language: str | None) -> ModelCandidate:
    """Fill ``covers`` and ``relevance`` in place and return the candidate."""
    cand.covers = coverage(cand.labels, task_labels)
    label_score = len(cand.covers) / len(task_labels) if task_labels else 0.0
    if cand.trainable:
        label_score *= 0.5
    popularity = min(1.0, math.log10(1 + cand.downloads) / 7) if cand.downloads else 0.0
    rel = W_LABELS * label_score + W_QUERY * query_overlap(words, [cand.id, *haystack]) + W_POPULARITY * popularity
    if not language_ok(cand.languages, language):
        rel *= 0.5
    cand.relevance = round(rel, 4)
    return cand


def rank(cands: Iterable[ModelCandidate], limit: int) -> list[ModelCandidate]:
    return sorted(cands, key=lambda c: (-c.relevance, -(c.downloads or 0), c.id))[:limit]


def as_list(value: object) -> list[str]:
    """Card metadata fields are a string or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


# A repo often holds the same weights in several formats; count one format, the one loaders prefer.
WEIGHT_FORMATS = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".gguf")


def weights_size(files: Iterable[tuple[str, int | None]]) -> int | None:
    """Bytes of the preferred weight format's files (shards summed) from (name, size) pairs."""
    files = [(name, size) for name, size in files if size]
    for suffix in WEIGHT_FORMATS:
        total = sum(size for name, size in files if name.endswith(suffix))
        if total:
            return total
    return None


def as_text(value: object) -> str | None:
    """A card field that should be one string (licence, pipeline tag) but may be a list or a number."""
    if value is None or value == "" or value == []:
        return None
    return ", ".join(as_list(value)) if isinstance(value, (list, tuple)) else str(value)
