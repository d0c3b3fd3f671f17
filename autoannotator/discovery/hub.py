"""``search_models``: find small classifiers for a labelling task, as the paper's meta-controller does.

Online it asks the Hugging Face Hub (``HfApi.list_models``, text-classification, by downloads) with
a few search words taken from the task, ranks the results, then reads ``model_info`` and
``config.json`` of the best few: the Hub's listing carries no ``id2label``, and a model's own
labels decide whether it can vote at all. Offline (``HF_HUB_OFFLINE``, or the Hub not answering
within seconds) it ranks what this machine can run instead. Both return the same schema.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from autoannotator.slm.catalog import classifier_labels
from autoannotator.task import LabelDef, TaskSpec
from autoannotator.discovery.candidates import (
    ModelCandidate,
    as_list,
    as_text,
    content_words,
    rank,
    score,
    weights_size,
)
from autoannotator.discovery.hubnet import HUB_TIMEOUT_S, endpoint, fetch_file, hub_status, mark_down, network_errors
from autoannotator.discovery.local_models import local_candidates

log = logging.getLogger(__name__)

KIND_SEARCH = {"sentiment": "sentiment", "toxicity": "toxic"}  # Hub search matches id substrings
MAX_TERMS = 3
MAX_DETAILED = 20  # each detailed candidate costs two requests


class SearchModelsArgs(BaseModel):
    query: str = Field(min_length=1, max_length=500,
                       description="what the task is about, in words, e.g. 'sentiment of product reviews'")
    labels: list[str] = Field(default_factory=list, max_length=50,
                              description="the task's labels, e.g. ['positive', 'negative', 'neutral']")
    limit: int = Field(10, ge=1, le=50, description="how many candidates to return")
    language: str | None = Field(None, max_length=20, description="language code of the texts, e.g. 'en'")


class SearchModelsResult(BaseModel):
    mode: Literal["online", "offline"]
    note: str | None = None
    candidates: list[ModelCandidate]


def listing_task(query: str, labels: list[str]) -> TaskSpec:
    """A TaskSpec for the catalog: the real labels when they form a valid set, else placeholders.

    The catalog only needs one to list models; coverage is recomputed against ``labels`` anyway.
    """
    try:
        return TaskSpec(instruction=query, labels=[LabelDef(name=n) for n in labels])
    except ValidationError:
        return TaskSpec(instruction=query, labels=[LabelDef(name="label_a"), LabelDef(name="label_b")])


def search_terms(task: TaskSpec, words: list[str]) -> list[str]:
    terms = [KIND_SEARCH[task.kind]] if task.kind in KIND_SEARCH else []
    for word in words:  # skip words a term already matches as a substring ("toxicity" after "toxic")
        if len(terms) < MAX_TERMS and not any(t in word or word in t for t in terms):
            terms.append(word)
    return terms


def _card(info: Any) -> dict[str, Any]:
    data = getattr(info, "card_data", None)
    return data.to_dict() if hasattr(data, "to_dict") else dict(data or {})


def _labels_from_config(config: dict[str, Any] | None) -> list[str]:
    """id2label in id order when ``model_info`` happens to carry it (the Hub usually strips it)."""
    id2label = (config or {}).get("id2label") or {}
    try:
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return []


def _candidate(info: Any) -> tuple[ModelCandidate, list[str | None]]:
    card = _card(info)
    tags = list(info.tags or [])
    licence = as_text(card.get("license")) or next((t.partition(":")[2] for t in tags if t.startswith("license:")),
                                                   None)
    siblings = [(s.rfilename, s.size) for s in (info.siblings or [])]
    cand = ModelCandidate(
        id=info.id, spec=f"hf:{info.id}", source="hub", pipeline_tag=info.pipeline_tag, downloads=info.downloads,
        likes=info.likes, parameters=info.safetensors.total if info.safetensors else None,
        size_bytes=weights_size(siblings), license=licence,
        languages=as_list(card.get("language")), labels=_labels_from_config(info.config))
    haystack = [*tags, info.pipeline_tag, getattr(info, "library_name", None), *as_list(card.get("datasets")),
                *as_list(card.get("tags"))]
    return cand, haystack


def _detail(api: Any, info: Any) -> tuple[ModelCandidate, list[str | None]]:
    """model_info (sizes, card, config) and, when it lacks id2label, the repo's config.json."""
    full = api.model_info(info.id, timeout=HUB_TIMEOUT_S, files_metadata=True)
    cand, haystack = _candidate(full)
    if not cand.labels and (config := fetch_file(info.id, "config.json")) is not None:
        cand.labels = classifier_labels(config) or []
    if not cand.labels:
        cand.note = "no id2label in config.json: not a sequence classifier, or opaque labels to map by hand"
    return cand, haystack


def hub_candidates(task: TaskSpec, labels: list[str], words: list[str], limit: int,
                   language: str | None) -> list[ModelCandidate]:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint())
    per_term = min(50, max(20, 3 * limit))
    listed: dict[str, Any] = {}
    for term in search_terms(task, words) or [None]:
        for info in api.list_models(pipeline_tag="text-classification", search=term, sort="downloads",
                                    limit=per_term, full=True, cardData=True):
            listed.setdefault(info.id, info)
    # Rank on what the listing says, then pay for details (labels, sizes) of the best few only.
    first = rank((score(*_candidate(i), labels, words, language) for i in listed.values()),
                 min(MAX_DETAILED, 2 * limit))
    detailed = []
    for cand in first:
        try:
            full, haystack = _detail(api, listed[cand.id])
        except network_errors() as exc:  # one flaky repo should not sink the search
            log.info("no details for %s: %s", cand.id, exc)
            cand.note = f"details unavailable: {type(exc).__name__}"
            detailed.append(cand)
            continue
        detailed.append(score(full, labels, words, haystack, language))
    return rank(detailed, limit)


def search_models(args: SearchModelsArgs, settings: Any = None, context: Any = None) -> SearchModelsResult:
    task_obj = getattr(context, "task", None)
    labels = list(dict.fromkeys(n.strip() for n in args.labels if n.strip())) or (
        list(task_obj.label_names) if isinstance(task_obj, TaskSpec) else [])
    task = listing_task(args.query, labels)
    words = content_words(args.query)
    online, why = hub_status()
    if online:
        try:
            return SearchModelsResult(mode="online", candidates=hub_candidates(task, labels, words, args.limit,
                                                                              args.language))
        except network_errors() as exc:
            mark_down(f"{type(exc).__name__}: {exc}")
            why = f"Hub search failed ({type(exc).__name__})"
    local = local_candidates(task, labels, words, settings, args.language)
    return SearchModelsResult(mode="offline", note=f"{why}; listing the models runnable on this machine",
                              candidates=rank(local, args.limit))


