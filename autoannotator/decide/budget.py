"""A cap on LLM calls (``--llm-budget F`` share of rows, ``--max-llm-cost USD``) over a stream of batches.

The least certain rows should get the calls, but rows arrive a batch at a time, so the whole
ranking is never known. The budget keeps a histogram of the priorities it has seen (in [0, 1]:
U(x) for the paper rule, the expected gain for the calibrated one) and asks, in each batch, the
candidates whose priority reaches the running quantile that would spend the remaining calls evenly
over the remaining rows:

    rate  = remaining calls / remaining rows
    tau   = the (1 - rate) quantile of the priorities seen so far (this batch included)

(rows exactly at the quantile's histogram bin are taken in proportion, so coarse priorities such
as the paper's U work too)
so an early under-spend raises the rate and an over-spend lowers it. The hard cap is applied per
batch (never more calls than are left), so the run cannot exceed its budget; with a cost cap the
calls left are estimated from the mean cost of the calls made so far, and that estimate can be off
by at most the batch in flight — hence "never more than one batch over".

The state is a small dict (counters and a 100-bin histogram) that goes into the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

N_BINS = 100


@dataclass
class LLMBudget:
    n_rows: int
    share: float | None = None  # max share of rows sent to the LLM
    max_cost: float | None = None  # USD
    calls: int = 0
    cost: float = 0.0
    seen: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * N_BINS)

    def __post_init__(self) -> None:
        if self.share is not None and not 0.0 <= self.share <= 1.0:
            raise ValueError("llm budget share must be in [0, 1]")
        if self.max_cost is not None and self.max_cost < 0:
            raise ValueError("max LLM cost must be >= 0")

    @property
    def active(self) -> bool:
        return self.share is not None or self.max_cost is not None

    def calls_left(self, cost_per_call: float | None = None, share_cap: float | None = None) -> float:
        """Calls still allowed: the tightest of the share cap, the cost cap and ``share_cap`` (a share of
        rows set per batch by the caller: inf when none applies)."""
        left = math.inf
        for share in (self.share, share_cap):
            if share is not None:
                left = min(left, math.floor(share * self.n_rows + 1e-9) - self.calls)
        if self.max_cost is not None:
            per_call = cost_per_call if cost_per_call else (self.cost / self.calls if self.calls else None)
            if per_call:
                left = min(left, math.floor((self.max_cost - self.cost) / per_call + 1e-9))
            elif self.cost >= self.max_cost:
                left = 0
        return max(left, 0)

    def _observe(self, priority: np.ndarray) -> None:
        bins = np.clip((np.asarray(priority, dtype=np.float64) * N_BINS).astype(np.int64), 0, N_BINS - 1)
        counts = np.bincount(bins, minlength=N_BINS)
        self.hist = [int(a + b) for a, b in zip(self.hist, counts)]
        self.seen += int(len(priority))

    def threshold(self, rate: float) -> tuple[float, float]:
        """(edge, fraction): priorities in bins above ``edge`` + 1/N_BINS are all within the top
        ``rate`` of those seen; of the boundary bin [edge, edge + 1/N_BINS) only ``fraction`` fit.

        The fraction matters for coarse priorities (with three voters U takes three values, so one
        bin can hold a third of all rows).
        """
        if rate >= 1.0:
            return 0.0, 1.0
        total = sum(self.hist)
        allowed = rate * total
        above = 0
        for b in range(N_BINS - 1, -1, -1):
            if above + self.hist[b] > allowed:
                return b / N_BINS, (allowed - above) / self.hist[b]
            above += self.hist[b]
        return 0.0, 1.0

    def select(self, candidates: np.ndarray, priority: np.ndarray, cost_per_call: float | None = None,
               share_cap: float | None = None) -> np.ndarray:
        """Mask of the batch's rows to ask: candidates above the running threshold, the boundary
        bin's share of those in it, highest priorities first, never more than the calls left.
        ``share_cap``: a further cap on the run's share of rows asked, for this batch's choice (the
        decider's default paper cap less its reserve, which moves as the run learns). Call ``spend`` afterwards."""
        cand = np.asarray(candidates, dtype=bool)
        prio = np.asarray(priority, dtype=np.float64)
        self._observe(prio)
        if not self.active and share_cap is None:
            return cand.copy()
        left = self.calls_left(cost_per_call, share_cap)
        remaining_rows = max(self.n_rows - (self.seen - len(prio)), 1)
        rate = min(1.0, left / remaining_rows) if left != math.inf else 1.0
        edge, fraction = self.threshold(rate)
        bins = np.clip((prio * N_BINS).astype(np.int64), 0, N_BINS - 1)
        boundary = int(round(edge * N_BINS))
        over = np.nonzero(cand & (bins > boundary))[0]
        at = np.nonzero(cand & (bins == boundary))[0]
        at_quota = int(math.floor(fraction * int((bins == boundary).sum()) + 0.5))
        at = at[np.argsort(-prio[at], kind="stable")[:at_quota]]
        idx = np.concatenate([over, at])
        cap = int(min(left, len(idx)))
        keep = idx[np.argsort(-prio[idx], kind="stable")[:cap]]
        out = np.zeros(len(prio), dtype=bool)
        out[keep] = True
        return out

    def spend(self, calls: int, cost: float = 0.0) -> None:
        self.calls += int(calls)
        self.cost += float(cost)

    def report(self) -> dict:
        """What was allowed and what was spent (share of all rows)."""
        return {"llm_budget_share": self.share, "max_llm_cost_usd": self.max_cost, "calls": self.calls,
                "share_spent": round(self.calls / self.n_rows, 4) if self.n_rows else 0.0,
                "cost_spent_usd": round(self.cost, 6)}

    def state_dict(self) -> dict:
        return {"n_rows": self.n_rows, "share": self.share, "max_cost": self.max_cost, "calls": self.calls,
                "cost": self.cost, "seen": self.seen, "hist": list(self.hist)}

    @classmethod
    def from_state(cls, state: dict) -> LLMBudget:
        return cls(n_rows=int(state["n_rows"]), share=state.get("share"), max_cost=state.get("max_cost"),
                   calls=int(state.get("calls", 0)), cost=float(state.get("cost", 0.0)),
                   seen=int(state.get("seen", 0)), hist=[int(x) for x in state.get("hist", [0] * N_BINS)])
