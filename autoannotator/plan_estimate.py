"""The cost plan: what a run will likely spend, estimated before anything is labelled.

Inputs are measured, not guessed, where they can be: the frozen SLMs run on a pilot sample (a few
hundred rows) and the routing rule says which of those rows would go to the verifier; the real
verification prompt is rendered for sample rows and its size counted; the price table prices it.
What cannot be measured before the run is an assumption, named in the estimate's ``assumptions``.

The range on the LLM calls comes from two sources, both computed from the pilot:

* sampling: a Wilson interval on the pilot's hard share (the share the SLMs disagree on);
* the trainable student: it abstains until its first fine-tuning round (after β verified rows),
  then it may vote. Its vote can settle a row only where one more vote could settle it at all; the
  rows that stay hard whatever it says (the frozen models split, or too few of them voted) are the
  *irreducible* share. After the first round the low end drops to that share; the high end keeps
  the frozen models' share (it assumes a voting student does not add hard rows on net, which the
  vote gate — it votes only once it beats chance on held-out verified rows — is there to ensure).

Token counts: no tokenizer for the endpoint's model is available offline (tiktoken fetches its
tables at first use), so tokens are characters / 4, the same estimate the verifier records when an
endpoint reports no usage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from autoannotator.config import PriceTable
from autoannotator.ensemble import is_hard, tally

CHARS_PER_TOKEN = 4
# The student's fine-tuning speed on this kind of 2-core CPU: all-MiniLM-L6-v2, seq 64, batch 16
# (shared/FACTS.md, "Speeds"); a GPU is far faster, so on one this overstates the wall time.
DEFAULT_TRAIN_SAMPLES_PER_S = 34.0
DEFAULT_ROUND_S = 20.0
# An endpoint bills its own tokenizer's count plus its chat template: the embedded server counted 52,995
# tokens where chars / 4 gave 32,572 on README's example (1.63x), so a real endpoint's high end is 1.7x.
TOKEN_HIGH_FACTOR = 1.7
# Wall time swings with machine load: speeds here varied up to 3x between runs (docs/benchmarks.md).
WALL_LOW_FACTOR, WALL_HIGH_FACTOR = 0.5, 3.0


def tokens_from_chars(n_chars: int) -> int:
    """The chars / 4 estimate (at least one token), as the verifier records when usage is missing."""
    return max(1, int(n_chars) // CHARS_PER_TOKEN)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial share k / n: stays inside [0, 1] and behaves at k = 0 or n."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class PilotShares(BaseModel):
    """What the routing rule made of the pilot rows' frozen-model votes."""

    n: int  # pilot rows (non-empty texts)
    hard: int  # routed to the verifier while the trainable models abstain
    irreducible: int  # still hard whatever one extra voter says


def pilot_shares(votes: np.ndarray, n_labels: int, epsilon: float, min_votes: int) -> PilotShares:
    """Apply the run's routing rule (U(x) >= epsilon, fewer than min_votes votes = hard) to the pilot's votes.

    ``votes`` is the (n, k) task-label index matrix from the pilot (-1 = abstain; the untrained
    student abstains). A row is irreducible if it is hard for every label one more voter could add.
    """
    votes = np.asarray(votes, dtype=np.int64).reshape(len(votes), -1)
    _, u, _ = tally(votes, n_labels, min_votes)
    hard = np.asarray(is_hard(u, epsilon), dtype=bool)
    always = np.ones(len(votes), dtype=bool)
    for label in range(n_labels):
        extra = np.concatenate([votes, np.full((len(votes), 1), label, dtype=np.int64)], axis=1)
        _, u_extra, _ = tally(extra, n_labels, min_votes)
        always &= np.asarray(is_hard(u_extra, epsilon), dtype=bool)
    return PilotShares(n=len(votes), hard=int(hard.sum()), irreducible=int((always & hard).sum()))


class Span(BaseModel):
    low: float
    expected: float
    high: float

    def contains(self, value: float, slack: float = 0.0) -> bool:
        return self.low * (1 - slack) <= value <= self.high * (1 + slack)


class Baseline(BaseModel):
    """Labelling every non-empty row with the LLM, at the same prompt."""

    llm_calls: int
    tokens: int
    cost_usd: float
    wall_s: float


class PlanEstimate(BaseModel):
    n_rows: int
    n_labelled_rows: int  # non-empty texts
    pilot_rows: int
    hard_share: Span
    llm_calls: Span
    tokens_in: Span
    tokens_out: Span
    tokens: Span
    cost_usd: Span
    wall_s: Span
    finetune_rounds: Span
    tokens_in_per_call: float
    tokens_out_per_call: float
    llm_only: Baseline
    cost_ratio_to_llm_only: Span
    prices: PriceTable
    assumptions: list[str] = Field(default_factory=list)


class Timing(BaseModel):
    """Seconds, measured where possible (pilot), else stated defaults."""

    slm_s_per_row: float  # the frozen SLMs, measured on the pilot
    llm_s_per_call: float  # one verification request's latency
    llm_s_measured: bool = False  # False: a stated default, not a measurement
    llm_concurrency: int = 4
    train_samples_per_s: float = DEFAULT_TRAIN_SAMPLES_PER_S
    # Per fine-tuning round, whatever its size: copying the model, scoring the held-out slice before
    # and after, saving the weights. A default: one 11-sample round took 58.7 s here at load average 10.
    finetune_round_s: float = DEFAULT_ROUND_S


def _rows_before_first_round(n: int, share: float, beta: int, trainable: bool) -> float:
    """Expected rows labelled before the β-th hard row: the student cannot vote before that."""
    if not trainable or share <= 0:
        return float(n)
    return min(float(n), beta / share)


def _calls(n: int, share_before: float, share_after: float, beta: int, trainable: bool) -> float:
    before = _rows_before_first_round(n, share_before, beta, trainable)
    return share_before * before + share_after * (n - before)


def _finetune_seconds(calls: float, beta: int, trainable: bool, holdout_fraction: float, epochs: int,
                      timing: Timing) -> tuple[int, float]:
    """(rounds, seconds): round r trains on the (1 - holdout) share of a pool of about r * β rows."""
    if not trainable or beta <= 0 or timing.train_samples_per_s <= 0:
        return 0, 0.0
    rounds = int(calls // beta)
    samples = sum((1 - holdout_fraction) * r * beta * epochs for r in range(1, rounds + 1))
    return rounds, samples / timing.train_samples_per_s + rounds * timing.finetune_round_s


def estimate_plan(*, n_rows: int, n_empty: int, shares: PilotShares, tokens_in_per_call: float,
                  tokens_out_per_call: float, prices: PriceTable, timing: Timing, beta: int, trainable: bool,
                  holdout_fraction: float = 0.2, epochs: int = 3, distinct_share: float = 1.0,
                  z: float = 1.96, token_high_factor: float = 1.0) -> PlanEstimate:
    """The estimate with its range, and labelling everything with the LLM for comparison.

    ``distinct_share`` is the share of distinct texts among the non-empty rows: a repeated text is
    answered from the cache, not paid for again.
    """
    n = max(0, n_rows - n_empty)
    p = shares.hard / shares.n if shares.n else 1.0
    # Finite population: a pilot that is most of the file leaves little to sample (all of it: nothing).
    fpc = math.sqrt(max(0, n - shares.n) / (n - 1)) if n > 1 and shares.n else 1.0
    lo, hi = wilson_interval(shares.hard, shares.n, z)
    p_lo, p_hi = p - (p - lo) * fpc, p + (hi - p) * fpc
    irr = shares.irreducible / shares.n if shares.n else 1.0
    irr_lo = irr - (irr - wilson_interval(shares.irreducible, shares.n, z)[0]) * fpc
    pay = max(0.0, min(1.0, distinct_share))
    calls = Span(low=_calls(n, p_lo, irr_lo, beta, trainable) * pay, expected=p * n * pay, high=p_hi * n * pay)
    calls = Span(**{k: float(round(v)) for k, v in calls.model_dump().items()})

    def scaled(per_call: float) -> Span:
        return Span(low=calls.low * per_call, expected=calls.expected * per_call, high=calls.high * per_call)

    t_in, t_out = scaled(tokens_in_per_call), scaled(tokens_out_per_call)
    t_in.high *= token_high_factor  # the tokenizer's uncertainty, on top of the calls'
    t_out.high *= token_high_factor
    cost = Span(**{k: prices.cost(getattr(t_in, k), getattr(t_out, k)) for k in ("low", "expected", "high")})
    rounds, walls = {}, {}
    for k in ("low", "expected", "high"):
        rounds[k], ft_s = _finetune_seconds(getattr(calls, k), beta, trainable, holdout_fraction, epochs, timing)
        llm_s = getattr(calls, k) * timing.llm_s_per_call / max(1, timing.llm_concurrency)
        walls[k] = (n * timing.slm_s_per_row + llm_s + ft_s) * {"low": WALL_LOW_FACTOR, "expected": 1.0,
                                                                 "high": WALL_HIGH_FACTOR}[k]
    all_calls = round(n * pay)
    llm_only = Baseline(
        llm_calls=all_calls, tokens=round(all_calls * (tokens_in_per_call + tokens_out_per_call)),
        cost_usd=prices.cost(all_calls * tokens_in_per_call, all_calls * tokens_out_per_call),
        wall_s=all_calls * timing.llm_s_per_call / max(1, timing.llm_concurrency))
    ratio = Span(**{k: (getattr(cost, k) / llm_only.cost_usd if llm_only.cost_usd else 0.0)
                    for k in ("low", "expected", "high")})
    assumptions = [
        f"hard share {p:.3f} measured on {shares.n} of {n} rows; the range is its {z:g}-sigma Wilson interval "
        f"with the finite-population correction: [{p_lo:.3f}, {p_hi:.3f}]",
        "tokens are characters / 4 of the rendered verification prompt (no offline tokenizer for the endpoint)",
        f"{timing.llm_s_per_call:.2f} s per LLM call at concurrency {timing.llm_concurrency}"
        + (" (measured on the pilot)" if timing.llm_s_measured else " (a default, not measured)"),
        f"wall time: the SLMs at the pilot's measured speed, LLM latency, {timing.finetune_round_s:g} s per "
        f"fine-tuning round plus {timing.train_samples_per_s:g} samples/s; the range is x{WALL_LOW_FACTOR:g} to "
        f"x{WALL_HIGH_FACTOR:g} for machine load; starting the LLM, loading models and planning are not included",
    ]
    if trainable:
        assumptions.append(
            f"after the first fine-tuning round (β = {beta}) the student may vote: the low end then falls to the "
            f"irreducible share {shares.irreducible / shares.n if shares.n else 1.0:.3f} (rows it cannot settle), "
            "the high end assumes it adds no hard rows on net")
    if pay < 1.0:
        assumptions.append(f"{pay:.1%} of the texts are distinct: repeats are answered from the cache")
    return PlanEstimate(
        n_rows=n_rows, n_labelled_rows=n, pilot_rows=shares.n, hard_share=Span(low=p_lo, expected=p, high=p_hi),
        llm_calls=calls, tokens_in=t_in, tokens_out=t_out,
        tokens=Span(low=t_in.low + t_out.low, expected=t_in.expected + t_out.expected, high=t_in.high + t_out.high),
        cost_usd=cost, wall_s=Span(low=walls["low"], expected=walls["expected"], high=walls["high"]),
        finetune_rounds=Span(low=rounds["low"], expected=rounds["expected"], high=rounds["high"]),
        tokens_in_per_call=tokens_in_per_call, tokens_out_per_call=tokens_out_per_call, llm_only=llm_only,
        cost_ratio_to_llm_only=ratio, prices=prices, assumptions=assumptions)


def spent_figures(report: dict) -> dict:
    """What a run spent, as its estimate counts it (report.json's figures): the estimate includes the audit, so
    this does too (the report gives the audit's apart)."""
    audit = (((report.get("decision") or {}).get("audit") or {}).get("usage")) or {}
    tokens = ((report.get("llm_tokens_in") or 0) + (report.get("llm_tokens_out") or 0)
              + int(audit.get("tokens_in", 0)) + int(audit.get("tokens_out", 0)))
    calls, cost = report.get("llm_calls"), report.get("est_cost_usd")
    return {"llm_calls": None if calls is None else calls + int(report.get("audit_llm_calls") or 0),
            "tokens": tokens,
            "cost_usd": None if cost is None else round(cost + float(report.get("audit_cost_usd") or 0.0), 6),
            "wall_s": (report.get("timings_s") or {}).get("graph_wall")}


def compare_with_spent(estimate: PlanEstimate, report: dict) -> dict:
    """The estimate next to what the run spent (``spent_figures``): each with whether it fell in range."""
    spent = spent_figures(report)
    out = {}
    for key, value in spent.items():
        span: Span = getattr(estimate, key)
        out[key] = {**span.model_dump(), "spent": value,
                    "in_range": None if value is None else span.low <= value <= span.high}
    return out


def summary_lines(estimate: PlanEstimate) -> list[str]:
    """The estimate in a few plain lines (the CLI prints them; the report quotes them)."""
    c, b = estimate.llm_calls, estimate.llm_only
    return [
        f"rows to label: {estimate.n_labelled_rows} (pilot: {estimate.pilot_rows} rows, hard share "
        f"{estimate.hard_share.expected:.1%}, range {estimate.hard_share.low:.1%}–{estimate.hard_share.high:.1%})",
        f"LLM calls: {c.expected:.0f} (range {c.low:.0f}–{c.high:.0f}); labelling everything with the LLM: "
        f"{b.llm_calls}",
        f"tokens: {estimate.tokens.expected:,.0f} (range {estimate.tokens.low:,.0f}–{estimate.tokens.high:,.0f}); "
        f"{estimate.tokens_in_per_call:.0f} in + {estimate.tokens_out_per_call:.0f} out per call",
        f"cost at {estimate.prices.model} prices: ${estimate.cost_usd.expected:.6f} (range "
        f"${estimate.cost_usd.low:.6f}–${estimate.cost_usd.high:.6f}); LLM-only ${b.cost_usd:.6f} "
        f"({estimate.cost_ratio_to_llm_only.expected:.0%} of it)",
        f"wall time: {estimate.wall_s.expected:.0f} s (range {estimate.wall_s.low:.0f}–{estimate.wall_s.high:.0f} s); "
        f"LLM-only {b.wall_s:.0f} s; fine-tuning rounds {estimate.finetune_rounds.expected:.0f}",
    ]


def prompt_tokens(message_texts: Sequence[str], overhead_tokens: int = 0) -> int:
    """Tokens of one rendered request: chars / 4 over its messages (as the verifier counts), plus
    ``overhead_tokens`` for what an endpoint adds and bills (the function schema, the chat template)."""
    return tokens_from_chars(sum(len(t) for t in message_texts)) + overhead_tokens


# -- measuring the inputs: the pilot, the prompt, the latency ------------------------------------------

DEFAULT_PILOT_ROWS = 300
# A one-label function-call answer: the embedded server answered with about 8 tokens out (the
# simulated verifier records the same figure).
TOKENS_OUT_PER_CALL = 8
# Latency defaults when nothing was measured: the embedded 135M model answers one call at a time
# (about 0.2 s each with 2 free threads, shared/FACTS.md; slower under load); an endpoint's
# round trip is taken as 1 s; a person as 10 s per sample (a guess, and said to be one).
LATENCY_S = {"embedded": 0.5, "llm": 1.0, "human": 10.0, "simulated": 0.0}


def verifier_kind(embedded: bool, info: dict | None) -> str:
    """Which latency and prompt accounting applies: simulated, human, embedded or llm (an endpoint)."""
    info = info or {}
    if info.get("simulated"):
        return "simulated"
    if info.get("human"):
        return "human"
    return "embedded" if embedded or info.get("embedded") else "llm"


def schema_overhead_tokens(labels: Sequence[str]) -> int:
    """What an endpoint adds per request for the forced function call: its JSON schema, chars / 4."""
    import json

    from autoannotator.llm.choose import label_tool

    return tokens_from_chars(len(json.dumps(label_tool(list(labels)))))


def _pilot_examples(sample: Sequence[str], j: int, task, settings) -> list:
    """``--few-shot N``: N other pilot rows as stand-in examples, so the estimate counts the longer prompt
    (the real ones are the nearest labelled rows: similar texts, so of about the same length)."""
    from autoannotator.verify.base import Example

    shots = min(int(getattr(settings, "few_shot", 0) or 0), max(0, len(sample) - 1))
    names = task.label_names
    return [Example(-1, sample[(j + 1 + i) % len(sample)], names[i % len(names)]) for i in range(shots)]


def estimate_for_models(models: Sequence, pilot_texts: Sequence[str], n_rows: int, n_empty: int, task, settings, *,
                        kind: str) -> PlanEstimate:
    """Run ``models`` (the run's own ensemble) on pilot texts (evenly spread rows) and estimate the whole run."""
    import time

    from autoannotator.ensemble import run_ensemble
    from autoannotator.slm.base import TrainableSLM
    from autoannotator.verify.prompt import VerifyPrompt

    sample = [t for t in pilot_texts if t.strip()]
    start = time.perf_counter()
    out = run_ensemble(models, sample, len(task.label_names), settings.min_votes)
    slm_s = (time.perf_counter() - start) / max(1, len(sample))
    shares = pilot_shares(out.votes, len(task.label_names), settings.epsilon, settings.min_votes)
    prompt = VerifyPrompt(task, settings.llm_max_text_chars)
    overhead = 0 if kind in ("simulated", "human") else schema_overhead_tokens(task.label_names)
    per_row = [prompt_tokens([str(m.content) for m in prompt.messages(t, _pilot_examples(sample, j, task, settings))],
                             overhead) for j, t in enumerate(sample)]
    tokens_in = sum(per_row) / len(per_row) if per_row else 0.0
    timing = Timing(slm_s_per_row=slm_s, llm_s_per_call=LATENCY_S.get(kind, 1.0),
                    llm_concurrency=1 if kind in ("embedded", "human") else settings.llm_max_concurrency)
    est = estimate_plan(
        n_rows=n_rows, n_empty=n_empty, shares=shares, tokens_in_per_call=tokens_in,
        tokens_out_per_call=0 if kind == "human" else TOKENS_OUT_PER_CALL, prices=settings.prices, timing=timing,
        beta=settings.beta, trainable=any(isinstance(m, TrainableSLM) for m in models),
        holdout_fraction=settings.finetune.holdout_fraction, epochs=settings.finetune.epochs,
        distinct_share=len(set(sample)) / len(sample) if sample else 1.0,
        token_high_factor=1.0 if kind in ("simulated", "human") else TOKEN_HIGH_FACTOR)
    if kind not in ("simulated", "human"):
        est.assumptions.append(f"the high end of tokens and cost is {TOKEN_HIGH_FACTOR:g}x the chars / 4 count: "
                               "the embedded server counted 1.63x that on README's example")
    _decide_adjustments(est, settings, n_rows - n_empty, tokens_in, kind)
    if int(getattr(settings, "few_shot", 0) or 0) > 0:
        est.assumptions.append(f"every call shows {settings.few_shot} examples (other pilot rows); the first "
                               "batch's calls show none, so the token count is a little high")
    est.assumptions.append(f"models: {', '.join(m.name for m in models)}; verifier: {kind}"
                           + ("" if overhead == 0 else f"; {overhead} tokens per call for the function schema"))
    return est


def estimate_for_data(settings, data_path, instruction: str, labels, *, text_column: str | None = None,
                      verifier: str = "llm", pilot_rows: int = DEFAULT_PILOT_ROWS) -> PlanEstimate:
    """The dry run: load the data, build the models the run would use, estimate. Nothing is labelled.

    The models: ``settings.models``, else a plan cached for this task and data (see
    ``agent.planning.cached_plan``), else the offline catalog's default choice.
    """
    from autoannotator.agent.planning import cached_plan
    from autoannotator.data import open_source
    from autoannotator.errors import UserError
    from autoannotator.slm.catalog import build_model, default_selection
    from autoannotator.task import build_task

    data = open_source(data_path, text_column, None, settings.max_text_chars)
    task = build_task(instruction, list(labels), data.text_column)
    specs, source = list(settings.models), "--models"
    if not specs:
        hit = cached_plan(settings, task, data.fingerprint)
        specs, source = (hit["model_specs"], "the cached plan") if hit else (default_selection(task, settings.k),
                                                                              "the offline default")
    if not specs:
        raise UserError("no small model can label this task offline; name some with --models")
    models = [build_model(s, task, settings) for s in specs]
    kind = verifier if verifier in ("simulated", "human") else ("embedded" if settings.uses_embedded_llm else "llm")
    if verifier.startswith("simulated"):
        kind = "simulated"
    est = estimate_for_models(models, data.sample_texts(pilot_rows), data.n_rows, data.n_empty, task, settings,
                              kind=kind)
    est.assumptions.append(f"models from {source}")
    return est


def _decide_adjustments(est: PlanEstimate, settings, n_live: int, tokens_in: float, kind: str) -> None:
    """What the decision layer adds or caps: the audit's settled rows (asked too) and an LLM budget.

    The calibrated routing rule (settings.routing) learns per vote pattern as the run goes; it is not
    replayed on the pilot, and the estimate says so.
    """
    from autoannotator.decide.audit import default_audit_size

    audit = getattr(settings, "audit", 0)
    n_audit = default_audit_size(n_live) if audit is None else int(audit or 0)
    budget = getattr(settings, "llm_budget", None)
    cap = budget * n_live if budget is not None else None
    paper_capped = (getattr(settings, "routing", "paper") != "paper" and getattr(settings, "cap_at_paper_share", False)
                    and budget is None and getattr(settings, "max_llm_cost", None) is None)
    out_tokens = 0 if kind == "human" else TOKENS_OUT_PER_CALL
    for key in ("low", "expected", "high"):
        calls = getattr(est.llm_calls, key)
        if cap is not None:  # a budget caps the routing; the declared audit comes on top, as under the paper cap
            calls = min(calls, float(round(cap)))
        calls += n_audit
        extra = calls - getattr(est.llm_calls, key)
        setattr(est.llm_calls, key, calls)
        for span, per in ((est.tokens_in, tokens_in), (est.tokens_out, out_tokens)):
            setattr(span, key, getattr(span, key) + extra * per)
        setattr(est.tokens, key, getattr(est.tokens_in, key) + getattr(est.tokens_out, key))
        setattr(est.cost_usd, key, est.prices.cost(getattr(est.tokens_in, key), getattr(est.tokens_out, key)))
    if n_audit:
        est.assumptions.append(f"{n_audit} settled rows are audited by the verifier too (settings.audit)")
    if cap is not None:
        est.assumptions.append(f"the LLM budget caps the calls at {budget:.0%} of the rows")
    if getattr(settings, "routing", "paper") != "paper":
        est.assumptions.append(f"routing {settings.routing!r} is not replayed on the pilot: the hard share is the "
                               "paper rule's (U(x) >= epsilon); the calibrated rule may ask about fewer or other rows"
                               + ("; with no budget set it asks at most the paper rule's share (the audit apart)"
                                  if paper_capped else ""))
