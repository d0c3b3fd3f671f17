"""Who verifies the hard samples: one declared interface and one place that builds verifiers.

Implementations: ``llm.LLMVerifier`` (an OpenAI-compatible chat model), ``human.HumanVerifier`` (a
person in the terminal) and ``simulated.SimulatedVerifier`` (a seeded stand-in for benchmarks);
``factory.make_verifier`` builds each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from autoannotator.costs import LLMUsage


@dataclass(frozen=True)
class Example:
    """A row labelled earlier in the run, shown to the verifier beside a hard row (``--few-shot``)."""

    row_id: int
    text: str
    label: str


class VerifyResult(BaseModel):
    row_id: int
    label: str | None  # None only when failed
    tokens_in: int  # spent by this call: 0 for a cache hit
    tokens_out: int
    cached: bool
    paid_by_run: str  # the run whose request produced this answer
    tokens_estimated: bool = False  # the endpoint reported no usage; counted as len(text)/4
    failed: bool = False  # no valid label after every attempt: the row keeps the models' label (llm_failed)


@runtime_checkable
class Verifier(Protocol):
    """Labels ``(row_id, text)`` pairs, answers in input order (a sample may be left out: then the
    models' majority stands for it); ``ledger`` says what a run paid for."""

    model_id: str

    def verify(self, items: list[tuple[int, str]]) -> Sequence[Any]: ...

    def ledger(self, run_id: str | None = None) -> LLMUsage: ...


@runtime_checkable
class HintedVerifier(Verifier, Protocol):
    """A verifier that shows the SLM votes next to each hard sample (the human one)."""

    def set_hints(self, hints: dict[int, dict]) -> None: ...


@runtime_checkable
class ExampleVerifier(Verifier, Protocol):
    """A verifier whose prompt can show labelled examples per row (the LLM one; the simulated one counts
    their tokens). ``set_examples`` replaces the examples for the next ``verify``: row id -> examples."""

    def set_examples(self, examples: Mapping[int, Sequence[Example]]) -> None: ...
