"""Ask the LLM for a label set when the user gave only an instruction."""

from __future__ import annotations

import re
from collections.abc import Sequence

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field, ValidationError

from autoannotator.errors import LLMUnavailable, UserError
from autoannotator.prompts import render
from autoannotator.task import LabelDef

MIN_LABELS, MAX_LABELS = 2, 10
MAX_NAME_CHARS = 40
SAMPLE_CHARS = 500  # a few hundred characters per example show the data without flooding the prompt


class ProposedLabel(BaseModel):
    # No string length bounds here: llama.cpp expands them into grammar rules that slow sampling
    # several-fold (40 s instead of 10 s here); _clean() checks names afterwards.
    name: str = Field(description="short lowercase category name, one or two words, e.g. positive")
    description: str = Field("", description="one sentence: when to use this label")


class ProposeLabels(BaseModel):
    """Propose the label set for this annotation task."""

    # Item bounds do go into the schema: without them the embedded model answers with an empty list.
    labels: list[ProposedLabel] = Field(min_length=MIN_LABELS, max_length=MAX_LABELS,
                                        description=f"{MIN_LABELS} to {MAX_LABELS} labels")


_USELESS = "the LLM could not propose a label set; pass --labels a,b,c"


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())


def _clean(proposed: Sequence[ProposedLabel], samples: Sequence[str]) -> list[LabelDef]:
    out: list[LabelDef] = []
    seen: set[str] = set()
    # Small models copy the sample texts into the label list: those are not categories.
    echoes = {_norm(t) for t in samples}
    for item in proposed:
        name = " ".join(item.name.split())
        # Commas would break `--labels a,b,c` round trips; long names are sentences, not labels.
        if not name or "," in name or len(name) > MAX_NAME_CHARS or name.lower() in seen or _norm(name) in echoes:
            continue
        try:
            out.append(LabelDef(name=name, description=" ".join(item.description.split())))
        except ValidationError:
            continue
        seen.add(name.lower())
    return out[:MAX_LABELS]


def _proposed(out: object) -> list[ProposedLabel]:
    """The proposed labels; leniently from the raw tool call when the schema's bounds rejected it
    (e.g. 12 labels from a model that was not grammar-constrained: keep the valid ones)."""
    if not isinstance(out, dict):
        return []
    parsed = out.get("parsed")
    if isinstance(parsed, ProposeLabels):
        return parsed.labels
    calls = getattr(out.get("raw"), "tool_calls", None) or []
    items = (calls[0].get("args") or {}).get("labels") if calls else None
    kept = []
    for item in items if isinstance(items, list) else []:
        try:
            kept.append(ProposedLabel.model_validate(item))
        except ValidationError:
            continue
    return kept


def propose_labels(chat: BaseChatModel, instruction: str, sample_texts: Sequence[str]) -> list[LabelDef]:
    texts = [t[:SAMPLE_CHARS] for t in sample_texts[:10] if t and t.strip()]
    messages = [SystemMessage(render("propose_labels_system.md")),
                HumanMessage(render("propose_labels_user.md", instruction=instruction, texts=texts))]
    structured = chat.with_structured_output(ProposeLabels, method="function_calling", include_raw=True)
    try:
        out = structured.invoke(messages)
    except (openai.APIConnectionError, openai.APIStatusError) as exc:
        raise LLMUnavailable(f"the LLM failed while proposing labels: {' '.join(str(exc).split())}") from None
    labels = _clean(_proposed(out), texts)
    if len(labels) < MIN_LABELS:
        raise UserError(_USELESS)
    return labels


# The paper's label sets for its two tasks; used when the LLM cannot be trusted to propose one.
STANDARD_LABEL_SETS: dict[str, list[LabelDef]] = {
    "sentiment": [LabelDef(name="positive", description="the text expresses a favourable opinion"),
                  LabelDef(name="negative", description="the text expresses an unfavourable opinion"),
                  LabelDef(name="neutral", description="no clear opinion either way")],
    "toxicity": [LabelDef(name="toxic", description="rude, hateful, obscene, threatening or insulting"),
                 LabelDef(name="non-toxic", description="none of those")],
}


def choose_labels(chat: BaseChatModel, instruction: str, sample_texts: Sequence[str], *,
                  weak_llm: bool) -> tuple[list[LabelDef], str]:
    """The label set for a task given only in words, and a note saying where it came from.

    A weak LLM (the embedded 135M model) proposes junk as often as not, so for a task family the
    paper covers it gets the paper's label set; any other LLM proposes, with that set as the
    fallback when its proposal is unusable.
    """
    from autoannotator.task import TaskSpec

    kind = TaskSpec(instruction=instruction, labels=[LabelDef(name="a"), LabelDef(name="b")]).kind
    standard = STANDARD_LABEL_SETS.get(kind)
    if standard and weak_llm:
        return standard, (f"label set: the standard {kind} labels ({', '.join(lbl.name for lbl in standard)}); "
                          f"the embedded LLM is too weak to propose one; pass --labels to choose")
    try:
        labels = propose_labels(chat, instruction, sample_texts)
    except UserError:
        if not standard:
            raise
        return standard, f"label set: the LLM's proposal was unusable, so the standard {kind} labels are used"
    return labels, f"label set proposed by the LLM: {', '.join(lbl.name for lbl in labels)}"
