"""Which LLM a run uses, recorded in run.json for the run's whole life.

A resumed run that silently talks to another model mixes two models' answers in one file and asks
again what it already paid for. So the run records its LLM's identity (endpoint and model) and the
settings that change its answers; a resume keeps them, and a different LLM is refused unless the
user asks for the switch explicitly (``--switch-llm``). Pure: the caller resolves the settings.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field

from autoannotator.errors import UserError

# Settings that change what the LLM is asked (and so its answers): frozen with the identity.
ANSWER_SETTINGS = ("llm_max_text_chars",)


class LLMIdentity(BaseModel):
    base_url: str | None  # None: the embedded server (its port changes at every start)
    model: str  # the served model's name, or the embedded GGUF file's name
    embedded: bool = False

    @property
    def label(self) -> str:
        return f"embedded:{self.model}" if self.embedded else f"{self.model}@{self.base_url}"

    def same_as(self, other: LLMIdentity) -> bool:
        return (self.embedded, self.model, (self.base_url or "").rstrip("/")) == (
            other.embedded, other.model, (other.base_url or "").rstrip("/"))


class LLMRecord(BaseModel):
    """run.json's ``llm``: the identity in use, the answer settings, and every switch made."""

    identity: LLMIdentity
    settings: dict[str, Any] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)  # earlier identities, with when they ended

    def all_labels(self) -> list[str]:
        return [LLMIdentity(**h["identity"]).label for h in self.history] + [self.identity.label]


def answer_settings(settings: Any) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in ANSWER_SETTINGS}


def identity_of(base_url: str | None, model: str | None, *, embedded_model: str | None = None) -> LLMIdentity:
    if base_url is None:
        return LLMIdentity(base_url=None, model=embedded_model or "embedded", embedded=True)
    return LLMIdentity(base_url=base_url.rstrip("/"), model=model or "", embedded=False)


def resume_llm(recorded: LLMRecord | None, requested: LLMIdentity | None, *, switch: bool,
               run_id: str) -> tuple[LLMRecord | None, str | None]:
    """The record a resumed run goes on with, and a note when it changed.

    ``requested``: what the user configured for this resume (None: nothing, which means "the run's").
    A run made before identities were recorded adopts what is requested (None: stays unknown).
    """
    if recorded is None:
        if requested is None:
            return None, None
        return LLMRecord(identity=requested), None
    if requested is None or requested.same_as(recorded.identity):
        return recorded, None
    if not switch:
        raise UserError(f"run {run_id} was labelled by {recorded.identity.label}; this resume would use "
                        f"{requested.label}. Resume without --llm-base-url/--llm-model to keep the run's LLM, "
                        f"or pass --switch-llm to change it (the report then lists both)")
    ended = datetime.now(timezone.utc).isoformat(timespec="seconds")
    history = [*recorded.history, {"identity": recorded.identity.model_dump(), "until": ended}]
    note = f"switched the LLM from {recorded.identity.label} to {requested.label} (--switch-llm)"
    return LLMRecord(identity=requested, settings=recorded.settings, history=history), note
