"""Deterministic stand-ins for SLMs and the verifier, to drive the annotation graph without models."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from autoannotator.slm.base import SLM, LabelMapping, TrainableSLM

LABELS = ["positive", "negative"]


class KeywordSLM(SLM):
    """Votes positive on texts containing `good`, negative on `bad`, abstains otherwise; `flip` inverts it."""

    def __init__(self, name: str, flip_on: str | None = None):
        super().__init__(name, LabelMapping.by_name(["positive", "negative", "neutral"], LABELS))
        self.flip_on = flip_on

    def native_proba(self, texts):
        out = np.zeros((len(texts), 3), dtype=np.float32)
        for i, t in enumerate(texts):
            col = 0 if "good" in t else 1 if "bad" in t else 2
            if self.flip_on and self.flip_on in t and col < 2:
                col = 1 - col
            out[i, col] = 1.0
        return out


class MemoStudent(TrainableSLM):
    """Abstains until trained; then votes the label it was taught for a text, else by keyword."""

    def __init__(self):
        super().__init__("student", LabelMapping.by_name(LABELS, LABELS))
        self.memory: dict[str, int] = {}
        self.rounds = 0

    @property
    def is_trained(self):
        return self.rounds > 0

    def native_proba(self, texts):
        out = np.full((len(texts), 2), np.nan, dtype=np.float32)
        if not self.is_trained:
            return out
        for i, t in enumerate(texts):
            col = self.memory.get(t, 0 if "good" in t else 1)
            out[i] = 0.0
            out[i, col] = 1.0
        return out

    def train_on(self, texts, labels, cfg, **kwargs):
        self.memory.update({t: int(lbl) for t, lbl in zip(texts, labels)})
        self.rounds += 1
        return {"n": len(texts)}

    def clone(self):
        return copy.deepcopy(self)

    def save(self, path):
        path.mkdir(parents=True, exist_ok=True)
        (path / "memory.json").write_text(__import__("json").dumps({"memory": self.memory, "rounds": self.rounds}))

    def load(self, path):
        data = __import__("json").loads((path / "memory.json").read_text())
        self.memory, self.rounds = data["memory"], data["rounds"]


@dataclass
class Verified:
    row_id: int
    label: str | None
    failed: bool = False


class OracleVerifier:
    """Answers from a gold list; records every request; can be told to crash after n calls."""

    model_id = "oracle"

    def __init__(self, gold: list[str], crash_after: int | None = None, fail_first: set[int] | None = None):
        """``fail_first``: rows whose first request gets no valid answer (asked again, they get one)."""
        self.gold, self.crash_after, self.asked = gold, crash_after, []
        self.fail_first = set(fail_first or ())

    def ledger(self, run_id=None):
        from autoannotator.costs import LLMUsage

        return LLMUsage(calls=len(self.asked))

    def verify(self, items):
        out = []
        for rid, _text in items:
            if self.crash_after is not None and len(self.asked) >= self.crash_after:
                raise KeyboardInterrupt("simulated crash")
            first = rid not in self.asked
            self.asked.append(rid)
            out.append(Verified(rid, None, failed=True) if first and rid in self.fail_first
                       else Verified(rid, self.gold[rid]))
        return out
