"""Label quality without gold: send a random sample of the rows the SLMs settled to the LLM too.

Choosing the sample: each row gets a uniform number from a hash of (seed, row id), so the same
rows are picked after a resume and in a rerun; a row the SLMs settled is audited when its number
is below a rate that spreads the remaining audit calls over the settled rows still expected. The
rate depends only on counters kept in the checkpoint, so a resumed run makes the same choices.

Estimating accuracy: if the accepted labels are right with probability a, the LLM with q, and
errors are spread evenly over the other L - 1 labels and independent of each other,

    P(agree) = a q + (1 - a)(1 - q) / (L - 1)   =>   a = (p - r) / (q - r),  r = (1 - q) / (L - 1)

with p the observed agreement rate. a rises with p and (for p > 1/L) falls with q, so the 95 %
interval is taken over the corners of the Wilson interval for p and the given interval for q: it
carries both uncertainties (conservatively). An LLM no better than chance (q <= 1/L) tells
nothing: the estimate is None and the interval [0, 1].
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from autoannotator.decide.label_model import wilson


def default_audit_size(n_rows: int) -> int:
    """min(100, 2 % of rows), at least one row when there are rows."""
    return min(100, max(1, math.ceil(0.02 * n_rows))) if n_rows > 0 else 0


def row_uniform(seed: int, row_id: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, row id): the same on every run and resume."""
    digest = hashlib.sha256(f"audit:{seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass
class AuditSampler:
    target: int
    n_rows: int
    seed: int = 0
    seen: int = 0
    settled_seen: int = 0
    picked: int = 0

    def pick(self, row_ids: list[int], settled: np.ndarray) -> list[int]:
        """Row ids of this batch's settled rows to audit."""
        settled = np.asarray(settled, dtype=bool)
        self.seen += len(row_ids)
        self.settled_seen += int(settled.sum())
        need = self.target - self.picked
        if need <= 0 or not settled.any():
            return []
        share = (self.settled_seen + 1) / (self.seen + 1)
        expected = settled.sum() + max(self.n_rows - self.seen, 0) * share
        rate = min(1.0, need / max(expected, 1.0))
        chosen = [rid for rid, s in zip(row_ids, settled) if s and row_uniform(self.seed, rid) < rate]
        chosen = sorted(chosen, key=lambda r: row_uniform(self.seed, r))[:need]
        self.picked += len(chosen)
        return sorted(chosen)

    def state_dict(self) -> dict:
        return {"target": self.target, "n_rows": self.n_rows, "seed": self.seed, "seen": self.seen,
                "settled_seen": self.settled_seen, "picked": self.picked}

    @classmethod
    def from_state(cls, state: dict) -> AuditSampler:
        return cls(**{k: int(state[k]) for k in ("target", "n_rows", "seed", "seen", "settled_seen", "picked")})


def _accuracy_from_agreement(p: float, q: float, n_labels: int) -> float:
    r = (1.0 - q) / max(n_labels - 1, 1)
    return (p - r) / (q - r)


def estimate_accuracy(agree: int, n: int, q: float, q_interval: tuple[float, float], n_labels: int) -> dict:
    """Accuracy of labels that agreed with an LLM of accuracy q on ``agree`` of ``n`` audited rows."""
    out = {"n": int(n), "agree": int(agree), "agreement": round(agree / n, 4) if n else None,
           "llm_accuracy": round(q, 4), "estimate": None, "interval": [0.0, 1.0]}
    chance = 1.0 / n_labels
    if n == 0 or q <= chance:
        return out
    p_lo, p_hi = wilson(agree, n)
    q_lo, q_hi = max(q_interval[0], chance + 1e-6), max(q_interval[1], chance + 1e-6)
    corners = [_accuracy_from_agreement(p, qq, n_labels) for p in (p_lo, p_hi) for qq in (q_lo, q_hi)]
    point = _accuracy_from_agreement(agree / n, q, n_labels)
    clip = lambda x: min(max(x, 0.0), 1.0)  # noqa: E731
    out["estimate"] = round(clip(point), 4)
    out["interval"] = [round(clip(min(corners)), 4), round(clip(max(corners)), 4)]
    return out


def estimate_by_source(rows: Iterable[tuple], q: float, q_interval: tuple[float, float],
                       n_labels: int) -> dict[str, dict]:
    """Per label source (and "all"): estimate from (label source, accepted label, LLM label) triples.

    A fourth element per row, the posterior's probability that the accepted label is right, adds the posterior's
    expected accuracy on the same rows (``posterior_expects``) and whether the audit's interval holds it
    (``posterior_within``): a check of the posterior's calibration that needs no gold, as weak as the audit is
    small (a wide interval can hold a miscalibrated posterior's figure and the truth at once)."""
    tallies: dict[str, list[float]] = {}
    for row in rows:
        source, label, llm_label = row[:3]
        expected = row[3] if len(row) > 3 else None
        for key in (source, "all"):
            t = tallies.setdefault(key, [0, 0, 0.0, 0])
            t[0] += int(label == llm_label)
            t[1] += 1
            if expected is not None:
                t[2] += float(expected)
                t[3] += 1
    out = {}
    for key, (agree, n, expected_sum, n_expected) in sorted(tallies.items()):
        out[key] = estimate_accuracy(int(agree), int(n), q, q_interval, n_labels)
        if n_expected == n and n:
            mean = expected_sum / n
            out[key]["posterior_expects"] = round(mean, 4)
            out[key]["posterior_within"] = bool(out[key]["interval"][0] <= mean <= out[key]["interval"][1])
    return out
