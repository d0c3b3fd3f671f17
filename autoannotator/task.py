"""What to label: the label set (with descriptions) and where the text is."""

from __future__ import annotations

import re
from enum import Enum

from pydantic import BaseModel, Field, field_validator, model_validator


class LabelSource(str, Enum):
    """Who decided a row's final label (the output's ``label_source`` column)."""

    SLM_CONSENSUS = "slm_consensus"  # the small models agreed
    LLM_VERIFIED = "llm_verified"  # the verifier (LLM or person) answered
    LLM_OVERRULED = "llm_overruled"  # the verifier answered, the posterior over all votes says otherwise
    SKIPPED_EMPTY = "skipped_empty"  # a blank text: nothing to label
    HUMAN_REVIEWED = "human_reviewed"  # set afterwards in Label Studio
    LLM_FAILED = "llm_failed"  # asked, never a valid label: the models' majority (or none) stands

    def __str__(self) -> str:  # what the output file and report.json show
        return self.value


class LabelDef(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _clean(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("label names must not be blank")
        return v


class TaskSpec(BaseModel):
    instruction: str
    labels: list[LabelDef] = Field(min_length=2, max_length=50)
    text_column: str = "text"

    @model_validator(mode="after")
    def _unique(self) -> "TaskSpec":
        names = [lbl.name.lower() for lbl in self.labels]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique, got {self.label_names}")
        return self

    @property
    def label_names(self) -> list[str]:
        return [lbl.name for lbl in self.labels]

    @property
    def kind(self) -> str:
        """A coarse family used to find pretrained scorers: 'sentiment', 'toxicity' or 'other'."""
        text = " ".join([self.instruction, *self.label_names]).lower()
        if re.search(r"toxic|profan|offensive|abusive|hate|insult|obscen", text):
            return "toxicity"
        if re.search(r"sentiment|polarity|positive|negative|opinion|review", text):
            return "sentiment"
        return "other"


def parse_labels(raw: str) -> list[LabelDef]:
    """`--labels positive,negative` or `--labels "positive: praise, negative: complaint"`."""
    out = []
    for part in raw.split(","):
        if not part.strip():
            continue
        name, _, desc = part.partition(":")
        out.append(LabelDef(name=name.strip(), description=desc.strip()))
    return out


def build_task(instruction: str, labels: list[LabelDef], text_column: str) -> TaskSpec:
    """A TaskSpec, or a one-line UserError saying what is wrong with the label set."""
    from pydantic import ValidationError

    from autoannotator.errors import UserError

    try:
        return TaskSpec(instruction=instruction, labels=labels, text_column=text_column)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"bad label set {[lbl.name for lbl in labels]}: {first['msg']} (need 2 or more distinct labels)") from None
