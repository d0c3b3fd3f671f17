"""A seeded stand-in for the LLM verifier, for studying the mechanism where no strong LLM can be reached.

It returns the gold label with probability P and a wrong label otherwise; the draw depends only on
(seed, row id), so every configuration of a benchmark meets the same "LLM" answers. Token counts
are estimates (characters / 4) of the real verification prompt. It needs gold labels, so it is
offered by `bench` only, never by `label`; every table and plot that uses it says so.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from autoannotator.verify.base import Example, VerifyResult
from autoannotator.verify.prompt import VerifyPrompt
from autoannotator.costs import LLMUsage
from autoannotator.task import TaskSpec

# The embedded server answered a one-label function call with about 8 tokens out.
_TOKENS_OUT = 8


class SimulatedVerifier:
    def __init__(self, gold: Sequence[str | None], task: TaskSpec, p: float, seed: int = 0,
                 max_text_chars: int = 4000, run_id: str = "bench"):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"simulated verifier accuracy must be in [0, 1], got {p}")
        self.gold, self.labels, self.p, self.seed, self.run_id = list(gold), task.label_names, p, seed, run_id
        self.prompt = VerifyPrompt(task, max_text_chars)
        self.model_id = f"simulated:{p}"
        self._paid: dict[int, tuple[int, int]] = {}
        self._examples: dict[int, tuple[Example, ...]] = {}

    def set_examples(self, examples: Mapping[int, Sequence[Example]]) -> None:
        """Few-shot examples do not change its answer (it ignores prompts), only the tokens it counts."""
        self._examples = {int(k): tuple(v) for k, v in examples.items()}

    @property
    def description(self) -> str:
        return f"simulated verifier (P={self.p})"

    def answer(self, row_id: int) -> str:
        rng = random.Random(f"{self.seed}:{row_id}")
        gold = self.gold[row_id]
        right = rng.random() < self.p
        if gold in self.labels and right:
            return gold
        wrong = [lbl for lbl in self.labels if lbl != gold]
        return rng.choice(wrong)

    def verify(self, items: list[tuple[int, str]]) -> list[VerifyResult]:
        out = []
        for row_id, text in items:
            chars = sum(len(str(m.content)) for m in self.prompt.messages(text, self._examples.get(row_id, ())))
            cached = row_id in self._paid
            if not cached:
                self._paid[row_id] = (max(1, chars // 4), _TOKENS_OUT)
            t_in, t_out = (0, 0) if cached else self._paid[row_id]
            out.append(VerifyResult(row_id=row_id, label=self.answer(row_id), tokens_in=t_in, tokens_out=t_out,
                                    cached=cached, paid_by_run=self.run_id, tokens_estimated=True))
        return out

    def ledger(self, run_id: str | None = None) -> LLMUsage:
        if run_id is not None and run_id != self.run_id:  # e.g. the run's planning calls: none went through it
            return LLMUsage()
        return LLMUsage(calls=len(self._paid), tokens_in=sum(a for a, _ in self._paid.values()),
                        tokens_out=sum(b for _, b in self._paid.values()), tokens_estimated=True)
