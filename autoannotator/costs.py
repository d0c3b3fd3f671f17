"""LLM usage and its price: what this run paid, and what labelling everything with the LLM would cost."""

from __future__ import annotations

from pydantic import BaseModel

from autoannotator.config import PriceTable


class LLMUsage(BaseModel):
    calls: int = 0  # every request the endpoint answered (extra_calls included)
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_estimated: bool = False
    extra_calls: int = 0  # answered but not kept: no valid label, unusable body, a duplicate
    timed_out: int = 0  # sent and never answered in time: counted, not priced (billing unknown)


def cost_summary(usage: LLMUsage, n_samples: int, n_verified_rows: int, prices: PriceTable) -> dict:
    """Cost of the run and an estimate of the all-LLM baseline at the same mean tokens per call.

    The baseline is an estimate: the LLM alone would send every sample through the same prompt,
    so its cost is n_samples x the mean cost of the calls this run made (none made: unknown).
    """
    cost = prices.cost(usage.tokens_in, usage.tokens_out)
    per_call = cost / usage.calls if usage.calls else None
    baseline = per_call * n_samples if per_call is not None else None
    return {
        "llm_calls": usage.calls,
        "llm_calls_not_kept": usage.extra_calls,
        "llm_requests_timed_out": usage.timed_out,
        "llm_call_rate": round(usage.calls / n_samples, 4) if n_samples else 0.0,
        "llm_verified_rows": n_verified_rows,
        "llm_tokens_in": usage.tokens_in,
        "llm_tokens_out": usage.tokens_out,
        "llm_tokens_estimated": usage.tokens_estimated,
        "est_cost_usd": round(cost, 6),
        "all_llm_baseline_cost_usd": round(baseline, 6) if baseline is not None else None,
        "all_llm_baseline_is_estimate": True,
        "cost_ratio_to_all_llm": round(cost / baseline, 4) if baseline else None,
        "price_table": prices.model_dump(),
    }
