"""The offline side of ``search_models``: what this machine can run, as ``ModelCandidate``s.

The list itself is ``slm.catalog.catalog_entries`` (packaged scorers, the student, classifiers in
the Hugging Face cache and in ``settings.model_dirs``); this module only adds what a search
result carries beyond the catalog: languages, licence and tags from the card's YAML header,
the weights' size on disk, and the relevance score.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoannotator.slm.catalog import CatalogEntry, catalog_entries
from autoannotator.discovery.candidates import ModelCandidate, as_list, as_text, score, weights_size
from autoannotator.discovery.hubnet import cached_file
from autoannotator.discovery.packaged import packaged_facts

if TYPE_CHECKING:
    from autoannotator.task import TaskSpec

log = logging.getLogger(__name__)

def card_metadata(readme: Path | None) -> dict[str, Any]:
    """The YAML header of a README.md, or {} when there is none or it does not parse."""
    if readme is None or not readme.is_file():
        return {}
    try:
        from huggingface_hub import metadata_load

        return metadata_load(readme) or {}
    except Exception as exc:  # hand-written cards have broken YAML often enough
        log.debug("unreadable card metadata in %s: %s", readme, exc)
        return {}


def weights_bytes(folder: Path | None) -> int | None:
    """Bytes of weight files in a model folder (following the cache's symlinks to blobs)."""
    if folder is None or not folder.is_dir():
        return None
    return weights_size((f.name, f.stat().st_size) for f in folder.iterdir() if f.is_file())


def _hf_candidate(entry: CatalogEntry) -> tuple[ModelCandidate, list[str | None]]:
    ident = entry.name.removeprefix("hf:")
    folder: Path | None = Path(ident).expanduser()
    if folder.is_dir():  # catalog names local folders by path, cached models by hub id
        source = "local-dir"
    else:
        source = "hf-cache"
        config = cached_file(ident, "config.json")
        folder = config.parent if config else None
    meta = card_metadata(folder / "README.md" if folder else None)
    licence = as_text(meta.get("license")) or (None if entry.licence.startswith("unknown") else entry.licence)
    cand = ModelCandidate(id=ident, spec=entry.name, source=source, pipeline_tag=as_text(meta.get("pipeline_tag")),
                          labels=entry.native_labels, license=licence, languages=as_list(meta.get("language")),
                          size_bytes=weights_bytes(folder))
    haystack = [entry.kind, *as_list(meta.get("tags")), *as_list(meta.get("datasets")), cand.pipeline_tag]
    return cand, haystack


def _packaged_candidate(entry: CatalogEntry) -> tuple[ModelCandidate, list[str | None]]:
    facts = packaged_facts(entry.name)
    cand = ModelCandidate(
        id=entry.name, spec=entry.name, source="packaged", pipeline_tag="text-classification",
        labels=entry.native_labels, license=entry.licence, languages=facts.languages if facts else [],
        trainable=entry.trainable, parameters=facts.parameters if facts else None,
        size_bytes=facts.size_bytes if facts else None,
        note="untrained until the first fine-tuning round; abstains before it" if entry.trainable else None)
    return cand, [entry.kind, entry.source]


def local_candidates(task: "TaskSpec", task_labels: list[str], words: list[str], settings: Any,
                     language: str | None) -> list[ModelCandidate]:
    """Every runnable model, scored; the caller ranks and cuts."""
    out = []
    for entry in catalog_entries(task, settings):
        build = _hf_candidate if entry.name.startswith("hf:") else _packaged_candidate
        cand, haystack = build(entry)
        out.append(score(cand, task_labels, words, haystack, language))
    return out
