"""Ask the LLM for a label set when the user gave only an instruction."""

from __future__ import annotations

from collections.abc import Sequence

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field, ValidationError

from autoannotator.errors import LLMUnavailable, UserError
from autoannotator.prompts import render
from autoannotator.task import LabelDef

MIN_LABELS, MAX_LABELS = 2, 10
SAMPLE_CHARS = 500  # a few hundred characters per example show the data without flooding the prompt


class ProposedLabel(BaseModel):
    name: str = Field(description="short lowercase label name, no commas")
    description: str = Field("", description="one sentence: when to use this label")


class ProposeLabels(BaseModel):
    """Propose the label set for this annotation task."""

    labels: list[ProposedLabel] = Field(description=f"{MIN_LABELS} to {MAX_LABELS} labels")


_USELESS = "the LLM could not propose a label set; pass --labels a,b,c"


def _clean(proposed: Sequence[ProposedLabel]) -> list[LabelDef]:
    out: list[LabelDef] = []
    seen: set[str] = set()
    for item in proposed:
        name = " ".join(item.name.split())
        # Commas would break `--labels a,b,c` round trips; over-long names are not labels.
        if not name or "," in name or name.lower() in seen:
            continue
        try:
            out.append(LabelDef(name=name, description=" ".join(item.description.split())))
        except ValidationError:
            continue
        seen.add(name.lower())
    return out[:MAX_LABELS]


def propose_labels(chat: BaseChatModel, instruction: str, sample_texts: Sequence[str]) -> list[LabelDef]:
    texts = [t[:SAMPLE_CHARS] for t in sample_texts[:10] if t and t.strip()]
    messages = [SystemMessage(render("propose_labels_system.md")),
                HumanMessage(render("propose_labels_user.md", instruction=instruction, texts=texts))]
    structured = chat.with_structured_output(ProposeLabels, method="function_calling", include_raw=True)
    try:
        out = structured.invoke(messages)
    except (openai.APIConnectionError, openai.APIStatusError) as exc:
        raise LLMUnavailable(f"the LLM failed while proposing labels: {' '.join(str(exc).split())}") from None
    parsed = out.get("parsed") if isinstance(out, dict) else None
    if not isinstance(parsed, ProposeLabels):
        raise UserError(_USELESS)
    labels = _clean(parsed.labels)
    if len(labels) < MIN_LABELS:
        raise UserError(_USELESS)
    return labels
