"""The one place verifiers are built."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from autoannotator.config import Settings
from autoannotator.llm.factory import LLMHandle
from autoannotator.run.paths import RunPaths
from autoannotator.task import TaskSpec
from autoannotator.verify.base import Verifier
from autoannotator.verify.llm import LLMVerifier
from autoannotator.verify.simulated import SimulatedVerifier

VerifierKind = Literal["llm", "human", "simulated"]


def make_verifier(kind: VerifierKind, task: TaskSpec, run_dir: Path, run_id: str, settings: Settings, *,
                  llm: LLMHandle | None = None, gold: Sequence[str | None] | None = None,
                  p: float | None = None, model_id: str | None = None, **human: Any) -> Verifier:
    """The one place verifiers are built. ``llm``: needs the LLM handle; ``simulated``: the gold labels
    and its accuracy ``p``; ``human``: keyword arguments for HumanVerifier (console, live, input)."""
    answers = RunPaths(run_dir).answers
    if kind == "llm":
        if llm is None:
            raise ValueError("an LLM verifier needs the LLM handle")
        chooser = llm.chooser(task.label_names, max_connections=settings.llm_max_concurrency)
        return LLMVerifier(chooser, model_id or llm.model_id, task, answers, run_id,
                           max_concurrency=settings.llm_max_concurrency, max_retries=settings.llm_max_retries,
                           max_text_chars=settings.llm_max_text_chars, backoff_base_s=settings.llm_backoff_base_s,
                           backoff_max_s=settings.llm_backoff_max_s,
                           retry_after_cap_s=settings.llm_retry_after_cap_s,
                           grace_s=min(10.0, float(settings.llm_timeout_s)))
    if kind == "human":
        from autoannotator.verify.human import HumanVerifier  # lazy: it draws with rich, in a terminal

        run_dir.mkdir(parents=True, exist_ok=True)
        return HumanVerifier(task, answers, run_id, **human)
    if kind == "simulated":
        if gold is None or p is None:
            raise ValueError("a simulated verifier needs the gold labels and its accuracy p")
        return SimulatedVerifier(gold, task, p, settings.seed, settings.llm_max_text_chars, run_id)
    raise ValueError(f"unknown verifier kind {kind!r}")
