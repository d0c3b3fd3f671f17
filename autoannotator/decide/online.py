"""The decision layer of a run, batch by batch: posterior, routing, budget, audit, LLM verdict.

The annotation graph calls two methods per batch:

- ``plan(row_ids, slm_votes, ...)`` after the SLMs voted: refits the per-pattern posterior on every
  row seen so far and returns the rows to ask the LLM (routing + budget) and the settled rows to
  audit;
- ``settle(row_ids, answers, audit_answers)`` after the LLM answered: returns each row's final
  label, confidence and label source.

Three models:
- ``PatternModel`` (the posterior that routes and labels with ``posterior_model="patterns"``, and
  until the logistic one below has its answers): confidence per SLM vote pattern learnt
  from the LLM's answers, so correlated SLMs (two lexicons agreeing on the same mistakes) are not
  believed twice. Its LLM confusion is one coin at ``llm_accuracy`` — an assumption, because with
  SLMs that may err together the LLM's accuracy and the patterns' sharpness cannot both be learnt
  from the votes (see ``pattern_model.py``) — *unless* the LLM is judged unreliable, then the
  label model's estimate of the LLM's confusion replaces it (an LLM answering one label for
  everything becomes uninformative: it is no longer asked and cannot move labels).
- ``LabelModel`` (Dawid–Skene over every source, the LLM included): the per-source reliabilities
  in the report.
- ``NoisyLogistic`` (``posterior_model="logistic"``, the default): once 30 answers of two labels are in,
  it replaces the pattern posterior for routing and labels: one logistic model over every SLM's vote and
  confidence, fitted by EM to the LLM's answers under the same LLM confusion. It shares what it learns
  across patterns instead of learning each from its own few answers; in replays of recorded runs it
  ranked rows better at every budget (docs/benchmarks.md). The pattern tables are still kept: the
  verdict and the first batches use them.

The LLM is judged unreliable when it agrees with the SLMs less than an LLM of the assumed accuracy
would: on the audit rows and on the rows it answered where at least two SLMs voted and all agreed,
an LLM right with probability q agrees with a label right with probability a at rate
a q + (1 - a)(1 - q)/(L - 1). That rate is symmetric in a and q: a weak LLM beside good SLMs and a
good LLM beside weak SLMs agree equally often, and no vote statistic tells them apart. So the test
assumes little of the SLMs and says only what the data can show, more than three standard errors
below the expectation (the test is repeated after every batch):

- overall, with a taken halfway from chance to the agreeing votes' share (0.625 for two agreeing votes of
  two labels, 0.65 for three): an LLM whose answers barely follow the text;
- per SLM label (at least 10 rows each), with a at chance (1/L): an LLM answering one label for
  everything agrees on the rows of that label and never on the others, and is caught after a few dozen
  answers, whatever the SLMs' accuracy.

An earlier version took a at the full vote share (0.75 for two agreeing votes) and, on movie-review
sentences where lexicons agreeing on "positive" are right only 0.70, judged a 0.9 LLM unreliable and
let the weak SLMs label: the false verdict costs the LLM's whole advantage, a missed one only the
difference between a poor LLM and the SLMs on the rows it is asked, so the test leans to trusting it.
The independent-answerer agreement is reported beside it. Split rows are left out on purpose: the
rows a rule sends to the LLM are the ones whose SLM label is worst, where even these bounds need not
hold.

The paper cap (``paper_cap``, the default when the user sets no budget). Unbudgeted, the calibrated rule
asks every row the LLM is expected to improve by ``margin``: beside weak SLMs that is nearly every row
(88 % of the movie-review sentences in docs/benchmarks.md), and beside good ones still a third to a half,
more than the paper's rule. So by default the run asks at most the share of rows the paper's rule would
(the rows seen with U >= epsilon, counted as they come), handed to the budget as a cap on the run's share,
and spends it on the rows whose posterior is least sure: at the paper's cost, better labels. The cap waits
for the LLM verdict's first rows (see ``_share_cap``); the rows it holds back are counted for the report.

With ``routing="paper"`` the rows asked and the labels are exactly the paper's (U >= epsilon, the
LLM's answer is the label); confidence, reliabilities and the audit are still computed.

Confidence bins. A hard vote cannot tell a confident student from a guessing one, so with
``confidence_bins`` B > 1 each vote is refined by its model's confidence bin, the cut points being the
model's own confidence quantiles over the rows seen so far (adapting to each model and to the run, no
fixed threshold): the pattern (positive, positive, abstain) splits into (positive-confident, ...) and
(positive-unconfident, ...). Refined patterns are thin, so each is shrunk toward its coarse pattern's
posterior (``refined``: a second ``PatternModel`` whose prior per row is the coarse posterior): a
refined pattern starts where its coarse pattern stands and moves only as far as its own answers
say. Cut points are recomputed from the stored confidences on every refit, so a resumed run bins as
an uninterrupted one.

The end of a run (the graph's finishing steps): ``fit_final`` fits the posterior on every answer, the final
fine-tuned models vote again on the rows settled before their weights came in (``revote``: calibrated routing,
an LLM not judged unreliable), ``top_up_rows`` picks the settled rows the final posterior is least sure of for
the ``reserve`` kept from the paper cap (``take_top_up`` adds their answers), and ``relabel_blocks`` labels every
row by the final posterior, which stays as ``fit_final`` left it (``frozen``).

An accuracy target (``target``, ``--target-accuracy``, off by default) trims the cap's choice in each batch to the
fewest most-gaining rows that bring the expected accuracy of every row decided so far to it, and the top-up to what
the final posterior still lacks (``_needed_for_target``, ``top_up_rows``).

Only counters, the budget and the audit go to the checkpoint (``state_dict``); the votes and the
voters' confidences are rebuilt from the run store with ``restore``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from autoannotator.decide.audit import AuditSampler, default_audit_size, estimate_by_source
from autoannotator.decide.budget import LLMBudget
from autoannotator.decide.label_model import LabelModel, one_coin
from autoannotator.decide.logistic import NoisyLogistic, vote_features
from autoannotator.decide.pattern_model import PatternModel, PatternTable, decode_patterns, pattern_ids
from autoannotator.decide.routing import route

LLM = "llm"
MIN_LLM_VOTES_FOR_VERDICT = 30  # fewer answers (on rows the SLMs labelled) than this: too few to judge
MIN_PER_CLASS = 10  # the per-label check needs this many answered rows with that SLM label
MIN_VOTES_FOR_BINS = 20  # a model with fewer votes seen is not split by confidence yet
# The confidence cut points are quantiles over every vote seen: refitted on every batch while the rows seen are
# few, then whenever they have grown by CUTS_GROWTH, so a run's cost per row stays flat at any size (a refit,
# and finding the rows whose bin it moves, is a pass over every row seen).
CUTS_EVERY_BATCH_UPTO = 50_000
CUTS_GROWTH = 0.01
# The logistic posterior is refitted on every batch up to this many answered rows, then at each LOGISTIC_GROWTH
# of growth, on at most LOGISTIC_MAX_ROWS of them: its cost per batch stays bounded at any size.
LOGISTIC_EVERY_BATCH_UPTO = 2_000
LOGISTIC_GROWTH = 0.05
LOGISTIC_MAX_ROWS = 20_000


Z_VERDICT = 3.0  # standard errors: the test is repeated after every batch, so it must be strict
OVERALL = -1  # Verdict.failed_on: the check over all judged rows (else an SLM label's index)


def _below(hits: np.ndarray, expected: np.ndarray, weight: np.ndarray) -> bool:
    """Is the agreement rate more than Z_VERDICT standard errors below its expectation? (``weight``:
    rows behind each entry)"""
    n = float(weight.sum())
    e = float(np.dot(weight, expected)) / n
    se = math.sqrt(max(e * (1 - e), 1e-9) / n)
    return float(np.dot(weight, hits)) / n < e - Z_VERDICT * se


@dataclass
class BatchPlan:
    ask: list[int]  # row ids routed to the LLM
    audit: list[int]  # settled row ids also sent to the LLM, for the audit only
    confidence: dict[int, float]  # row id -> posterior confidence before any LLM answer
    priority: dict[int, float]


@dataclass
class Decision:
    label: int  # label index, -1 when nobody voted
    confidence: float
    source: str  # slm_consensus | llm_verified | llm_overruled | skipped


@dataclass
class PassTotals:
    """What one ``relabel_blocks`` pass sums on the way: the labels' confidences over the rows with text, and per
    SLM the final posterior's probability of its votes over its votes."""

    right: float
    live: int
    slm_right: np.ndarray
    slm_votes: np.ndarray


@dataclass
class Verdict:
    unreliable: bool
    n: int  # LLM answers on rows with an SLM label
    agreement: float | None
    independent_agreement: float | None  # what an answerer ignoring the text would reach
    llm_accuracy: float | None  # label-model estimate
    llm_interval: tuple[float, float] | None
    slm_consensus_accuracy: float | None  # label-model estimate
    expected_agreement: float | None = None  # what an LLM at the assumed accuracy would at least reach
    # the check that failed: OVERALL or the SLM label's index, the agreement seen there, the bound it fell under
    failed_on: int | None = None
    failed_n: int | None = None
    failed_agreement: float | None = None
    failed_floor: float | None = None

    def as_dict(self, label_names: list[str] | None = None) -> dict:
        rnd = lambda x: None if x is None else round(float(x), 4)  # noqa: E731
        failed = self.failed_on
        if failed is not None and failed != OVERALL:
            failed = label_names[failed] if label_names and failed < len(label_names) else str(failed)
        return {"unreliable": self.unreliable, "n": self.n, "agreement": rnd(self.agreement),
                "independent_agreement": rnd(self.independent_agreement), "llm_accuracy": rnd(self.llm_accuracy),
                "llm_interval": None if self.llm_interval is None else [rnd(x) for x in self.llm_interval],
                "slm_consensus_accuracy": rnd(self.slm_consensus_accuracy),
                "expected_agreement": rnd(self.expected_agreement),
                "failed_on": "overall" if failed == OVERALL else failed, "failed_n": self.failed_n,
                "failed_agreement": rnd(self.failed_agreement), "failed_floor": rnd(self.failed_floor)}


def resolve_target(settings) -> float | None:
    """``Settings.target_accuracy`` as a number: "llm" is the LLM's assumed accuracy (``llm_accuracy``)."""
    target = settings.target_accuracy
    return float(settings.llm_accuracy) if target == "llm" else (None if target is None else float(target))


def _fewest_reaching(candidates: np.ndarray, gain: np.ndarray, need: float) -> np.ndarray:
    """Mask of the fewest candidates, highest gain first, whose gains sum to at least ``need`` (all of them
    when they cannot; none when nothing is needed)."""
    out = np.zeros(len(gain), dtype=bool)
    if need <= 0:
        return out
    idx = np.nonzero(candidates)[0]
    idx = idx[np.argsort(-gain[idx], kind="stable")]
    n = int(np.searchsorted(np.cumsum(gain[idx]), need - 1e-12, side="left")) + 1
    out[idx[:n]] = True
    return out


def share_prior(votes: np.ndarray, n_labels: int) -> np.ndarray:
    """Vote shares with one pseudo-vote per label: a non-committal prior per row (an agreement of
    two voters is 0.75 for two labels, not the 0.99 an independence model would claim)."""
    v = np.asarray(votes, dtype=np.int64)
    counts = np.ones((v.shape[0], n_labels))
    rows, cols = np.nonzero(v >= 0)
    np.add.at(counts, (rows, v[rows, cols]), 1.0)
    return counts / counts.sum(axis=1, keepdims=True)


def unanimous(votes: np.ndarray) -> np.ndarray:
    """Rows where at least two voters voted and all voters agree: where SLM labels carry the most
    signal, so an LLM that ignores the text shows there (on split rows anyone agrees by chance)."""
    v = np.asarray(votes, dtype=np.int64)
    voted = v >= 0
    n = voted.sum(axis=1)
    hi = np.where(voted, v, -1).max(axis=1)
    lo = np.where(voted, v, np.iinfo(np.int64).max).min(axis=1)
    return (n >= 2) & (hi == lo)


@dataclass
class OnlineDecider:
    n_rows: int
    n_labels: int
    slm_names: list[str]
    routing: str = "calibrated"
    epsilon: float = 1e-6
    margin: float = 0.02
    explore: bool = False  # True: route on the pattern's lower bound (see PatternModel.pessimistic)
    confidence_bins: int = 2  # per-model confidence quantile bins refining each vote; 1 = hard votes only
    # the posterior that routes and labels: "patterns" (per vote pattern, refined by confidence bins) or
    # "logistic" (one model over every SLM's vote and confidence, logistic.py), once it has answers to learn from
    posterior_model: Literal["patterns", "logistic"] = "logistic"
    llm_accuracy: float = 0.9
    # With no budget of the user's: never ask a larger share of the rows than the paper's rule would have
    # (the rows with U >= epsilon), spent on the rows the posterior is least sure of.
    paper_cap: bool = False
    # Share of the paper cap held back while the batches are labelled and spent at the end (``top_up_rows``) on
    # the settled rows the final posterior is least sure of: the early rows were routed by a posterior that had
    # seen few answers. Not under a user's budget: there each answer is scarcer, and worth more as the
    # students' training data mid-run than as a late label (measured: docs/benchmarks.md).
    reserve: float = 0.0
    budget: LLMBudget | None = None
    audit: AuditSampler | None = None
    # The verifier's answer is the label (a person reviewing): routing still follows the posterior, but
    # an answer is never overruled by it, as a reviewer who corrects a label expects to see it stay.
    answers_final: bool = False
    unreliable_noted: bool = False
    held_back: int = 0  # rows the paper cap kept from the LLM though asking was expected to help
    revoted: int = 0  # settled rows the final models voted on again (``revote``)
    topped_up: int = 0  # settled rows asked at the end from the reserve (``top_up_rows``)
    audit_reused: int = 0  # audited rows the top-up chose: labelled by their audit answer, out of the audit
    # After ``fit_final`` the posterior stays as fitted: later answers (the top-up's) and votes (the re-vote's)
    # label rows but teach it nothing, since a final model's vote on a row it trained on looks surer than it is.
    frozen: bool = False
    # Ask no more than the labels need to be expected this accurate (``Settings.target_accuracy``; None: no target).
    # In each batch only the rows that gain most are asked, as many as bring the expected accuracy of every row
    # decided so far to the target (a shortfall or surplus of earlier batches carries over), and the top-up only
    # as many as the final posterior needs. The expectation is the posterior's own mean confidence, so the target
    # holds only as far as the posterior is calibrated; the audit estimate checks it without gold.
    target: float | None = None
    expected_right: float = 0.0  # the decided rows' summed confidence at their decision (rows with text only)
    expected_rows: int = 0
    spared: int = 0  # rows the LLM was expected to improve, not asked because the target was already met
    audit_usage: dict = field(default_factory=lambda: {"calls": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0})
    _verdict: Verdict | None = field(default=None, repr=False)
    # The totals of the last complete ``relabel_blocks`` pass; None once a vote or a refit could have moved them.
    # The finishing steps end with such a pass, so the report and the top-up's target get the final expectation
    # and reliabilities without another pass over every row (``_final_pass``).
    _last_pass: PassTotals | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings, n_rows: int, n_labels: int, slm_names: list[str], *,
                      answers_final: bool = False) -> OnlineDecider:
        """The decider a run's settings ask for (``routing``, ``llm_budget``, ``max_llm_cost``, ``audit``)."""
        audit_n = default_audit_size(n_rows) if settings.audit is None else int(settings.audit)
        return cls(n_rows=n_rows, n_labels=n_labels, slm_names=list(slm_names), routing=settings.routing,
                   epsilon=settings.epsilon, margin=settings.calibrated_margin, llm_accuracy=settings.llm_accuracy,
                   confidence_bins=settings.confidence_bins, posterior_model=settings.posterior_model,
                   budget=LLMBudget(n_rows, share=settings.llm_budget, max_cost=settings.max_llm_cost),
                   paper_cap=settings.cap_at_paper_share and settings.llm_budget is None and settings.max_llm_cost is None,
                   reserve=settings.final_reserve, target=resolve_target(settings),
                   audit=AuditSampler(audit_n, n_rows, seed=settings.seed) if audit_n > 0 else None,
                   answers_final=answers_final)

    def add_audit_usage(self, calls: int, tokens_in: int, tokens_out: int, cost: float) -> None:
        for key, value in (("calls", calls), ("tokens_in", tokens_in), ("tokens_out", tokens_out)):
            self.audit_usage[key] = int(self.audit_usage.get(key, 0)) + int(value)
        self.audit_usage["cost_usd"] = round(float(self.audit_usage.get("cost_usd", 0.0)) + cost, 8)

    def summary(self, label_names: list[str]) -> dict:
        """What the report shows: the rule, the budget spent, reliabilities, the verdict, the audit."""
        v = self.verdict(estimates=True)
        audit = self.audit_estimate()
        return {"routing": self.routing, "llm_accuracy_assumed": self.llm_accuracy, "margin": self.margin,
                "budget": self.budget.report(), "reliability": self.reliability(),
                "paper_cap": {"applied": self.paper_cap and self.routing != "paper", "share": self.paper_share(),
                              "held_back": self.held_back},
                "final_revote": {"rows": self.revoted},
                "top_up": {"reserve": self.reserve, "rows": self.topped_up, "audited_reused": self.audit_reused},
                "target": self._target_summary(),
                # calibrated routing: the final posterior's mean confidence, an estimate without gold
                "expected_accuracy": None if self.routing == "paper" else round(self.expected_accuracy()[0], 4),
                "llm_verdict": v.as_dict(label_names),
                "audit": {"target": self.audit.target if self.audit else 0,
                          "rows": len(self._audit_llm), "usage": dict(self.audit_usage),
                          "estimates": audit}}

    def __post_init__(self) -> None:
        self.sources = list(self.slm_names) + [LLM]
        self._votes = np.full((self.n_rows, len(self.sources)), -1, dtype=np.int16)
        self._conf = np.zeros((self.n_rows, len(self.slm_names)), dtype=np.float64)  # each vote's probability
        self._seen = np.zeros(self.n_rows, dtype=bool)
        self._audit_llm: dict[int, int] = {}
        self._accepted: dict[int, tuple[int, str]] = {}
        self.patterns = PatternModel(self.n_labels, llm_prior=(self.llm_accuracy, 1.0), fixed_llm=True)
        self.refined = PatternModel(self.n_labels, llm_prior=(self.llm_accuracy, 1.0), fixed_llm=True)
        self._cuts: list[np.ndarray] = [np.zeros(0)] * len(self.slm_names)
        self._cuts_at = 0  # rows seen when the cuts were last fitted
        self._coarse = PatternTable(self.n_rows, self.n_labels)  # per-row pattern and answer counts, kept
        self._fine = PatternTable(self.n_rows, self.n_labels)  # as rows arrive (the refined ones under _cuts)
        self._split: set[int] = set()
        self._stale = False  # votes added since the last fit (a resumed run settles a batch it did not plan)
        self.label_model: LabelModel | None = None
        self.logistic = NoisyLogistic(self.n_labels)
        self._logistic_at = -1  # answered rows when the logistic posterior was last fitted
        self._n_answered = 0  # rows with an LLM answer, kept as answers arrive (no pass over the rows per batch)
        self._hard = np.zeros(self.n_rows, dtype=np.int8)  # 1: the paper's rule would ask, 0: not, -1: not judged
        self._hard[:] = -1
        self._n_hard = 0
        self._n_judged = 0
        if self.budget is None:
            self.budget = LLMBudget(self.n_rows)

    # ---------- the vote book ----------

    def add_slm_votes(self, row_ids: list[int], votes: np.ndarray, confidence: np.ndarray | None = None) -> None:
        """``confidence`` [n, k]: each vote's probability (as the store keeps it); None keeps what was
        recorded (the accept step re-adds the votes it was planned with)."""
        ids = np.asarray(row_ids, dtype=np.int64)
        self._last_pass = None
        new = np.asarray(votes, dtype=np.int16).reshape(len(ids), -1)
        conf = None if confidence is None else np.asarray(confidence, dtype=np.float64).reshape(len(ids), -1)
        self._stale |= bool((~self._seen[ids]).any() or (self._votes[ids, :-1] != new).any()
                            or (conf is not None and (self._conf[ids] != conf).any()))
        self._votes[ids, :-1] = new
        if conf is not None:
            self._conf[ids] = conf
        self._seen[ids] = True
        self._coarse.assign(ids, pattern_ids(self._slm(ids), self.n_labels))
        if self.confidence_bins > 1:
            self._fine.assign(ids, self._refined_ids(ids))

    def add_llm_votes(self, answers: Mapping[int, int]) -> None:
        if not answers:
            return
        self._last_pass = None
        rows = np.fromiter((int(r) for r in answers), dtype=np.int64, count=len(answers))
        values = np.fromiter((int(a) for a in answers.values()), dtype=np.int64, count=len(answers))
        self._n_answered += int(((self._votes[rows, -1] < 0) & (values >= 0)).sum())
        self._votes[rows, -1] = values
        self._coarse.answer(rows, values)
        self._fine.answer(rows, values)

    def _rebuild_tables(self) -> None:
        """The pattern tables from the vote book, after it was written directly (``restore``)."""
        rows = np.nonzero(self._seen)[0]
        self._n_answered = int((self._votes[rows, -1] >= 0).sum())
        self._coarse = PatternTable(self.n_rows, self.n_labels)
        self._coarse.assign(rows, pattern_ids(self._slm(rows), self.n_labels))
        self._coarse.answer(rows, self._votes[rows, -1].astype(np.int64))
        self._fine = PatternTable(self.n_rows, self.n_labels)
        if self.confidence_bins > 1:
            self._fine.assign(rows, self._refined_ids(rows))
            self._fine.answer(rows, self._votes[rows, -1].astype(np.int64))

    def _slm(self, rows: np.ndarray) -> np.ndarray:
        return self._votes[rows, :-1].astype(np.int64)

    def _mark_hard(self, rows: np.ndarray, uncertainty: np.ndarray) -> None:
        """Record which rows the paper's rule would ask (U >= epsilon; NaN: no text, not judged)."""
        new = np.where(np.isnan(uncertainty), -1, (np.nan_to_num(uncertainty) >= self.epsilon).astype(np.int8))
        old = self._hard[rows]
        self._n_hard += int((new == 1).sum() - (old == 1).sum())
        self._n_judged += int((new >= 0).sum() - (old >= 0).sum())
        self._hard[rows] = new

    # ---------- models ----------

    def _llm_confusion(self) -> np.ndarray:
        """One coin at the assumed accuracy; for an LLM judged unreliable (its answers independent of
        the SLMs' labels) every row of the confusion is its answer frequencies: its answers carry no
        information, so it is not asked (but for the audit) and cannot move a label."""
        if self.verdict().unreliable:
            freq = self._coarse.answers.sum(axis=0) + 1.0  # the answers on the rows seen
            return np.tile(freq / freq.sum(), (self.n_labels, 1))
        return one_coin(self.llm_accuracy, self.n_labels)

    def _fit_cuts(self, rows: np.ndarray) -> None:
        """Each model's confidence quantiles over its votes on ``rows`` (the rows seen so far)."""
        qs = np.arange(1, self.confidence_bins) / self.confidence_bins
        cuts = []
        for j in range(len(self.slm_names)):
            c = self._conf[rows, j][self._votes[rows, j] >= 0]
            cut = np.unique(np.quantile(c, qs)) if len(c) >= MIN_VOTES_FOR_BINS and qs.size else np.zeros(0)
            # every vote in one bin (bins are monotone in c: the lowest and the highest share one): no split
            if cut.size and np.searchsorted(cut, c.min(), side="left") == np.searchsorted(cut, c.max(), side="left"):
                cut = np.zeros(0)
            cuts.append(cut)
        self._cuts = cuts

    def _refined_ids(self, rows: np.ndarray) -> np.ndarray:
        """Pattern ids of the votes refined by confidence bin: vote v in bin b -> v * B + b."""
        slm = self._slm(rows)
        bins = self.confidence_bins
        fine = np.full_like(slm, -1)
        for j, cut in enumerate(self._cuts):
            b = np.searchsorted(cut, self._conf[rows, j], side="left")  # a value at a cut goes below it
            fine[:, j] = np.where(slm[:, j] >= 0, slm[:, j] * bins + b, -1)
        return pattern_ids(fine, self.n_labels * bins)

    def _refit(self) -> None:
        """Both pattern models from the pattern tables: the cost grows with the patterns seen, not the rows
        (but for the confidence cut points: quantiles over every vote seen, a vectorised pass, on every
        batch up to CUTS_EVERY_BATCH_UPTO rows seen and then at each CUTS_GROWTH of growth; only the rows
        whose bin they move change their refined pattern)."""
        self._stale = False
        # The label model only reports (reliabilities, the verdict's estimates): fitted when asked, not on
        # every batch, where refitting it over every row seen made a run's cost grow with its rows squared.
        self.label_model = None
        self._verdict = None
        conf = self._llm_confusion()
        self.patterns.fixed_llm = self.refined.fixed_llm = True
        self.patterns.llm_confusion = conf
        k = len(self.slm_names)
        coarse = self._coarse
        self.patterns.fit_table(coarse.keys, share_prior(decode_patterns(coarse.keys, self.n_labels, k),
                                                         self.n_labels), coarse.answers)
        if self.confidence_bins > 1:
            rows = np.nonzero(self._seen)[0]
            if len(rows) <= CUTS_EVERY_BATCH_UPTO or len(rows) >= self._cuts_at * (1 + CUTS_GROWTH):
                self._move_cuts(rows)
            fine = self._fine
            live = fine.rows > 0
            fine_votes = decode_patterns(fine.keys, self.n_labels * self.confidence_bins, k)
            coarse_votes = np.where(fine_votes >= 0, fine_votes // self.confidence_bins, -1)
            of_fine = pattern_ids(coarse_votes, self.n_labels)  # each refined pattern's coarse pattern
            kinds, n_fine = np.unique(of_fine[live], return_counts=True)
            self._split = set(kinds[n_fine > 1].tolist())  # coarse patterns the bins divide
            self.refined.llm_confusion = conf.copy()
            self.refined.fit_table(fine.keys, self.patterns.posterior(of_fine, share_prior(coarse_votes, self.n_labels)),
                                   fine.answers)
        if self.posterior_model == "logistic":
            self._fit_logistic(conf)

    def _fit_logistic(self, conf: np.ndarray) -> None:
        """The logistic posterior on the answered rows (at most LOGISTIC_MAX_ROWS of them, evenly spread),
        refitted on every batch while they are few, then at each LOGISTIC_GROWTH of growth; not for an LLM
        judged unreliable (its answers would teach it nothing: the patterns' share prior labels instead)."""
        if self.verdict().unreliable:
            self.logistic.load_state_dict(None)
            self._logistic_at = -1
            return
        if self.frozen and self.logistic.fitted:
            return
        n = self._n_answered
        if self.logistic.fitted and (n == self._logistic_at or (
                n > LOGISTIC_EVERY_BATCH_UPTO and n <= self._logistic_at * (1 + LOGISTIC_GROWTH))):
            return
        answered = np.nonzero(self._seen & (self._votes[:, -1] >= 0))[0]
        if len(answered) > LOGISTIC_MAX_ROWS:
            answered = answered[np.linspace(0, len(answered) - 1, LOGISTIC_MAX_ROWS).astype(np.int64)]
        self.logistic.fit(self._features(answered), self._votes[answered, -1].astype(np.int64), conf)
        self._logistic_at = n

    def _features(self, rows: np.ndarray) -> np.ndarray:
        return vote_features(self._slm(rows), self._conf[rows], self.n_labels)

    def _move_cuts(self, rows: np.ndarray) -> None:
        """Refit the cut points over ``rows`` (every row seen); re-pattern only the votes whose bin moved."""
        old = self._cuts
        self._fit_cuts(rows)
        self._cuts_at = len(rows)
        moved = np.zeros(len(rows), dtype=bool)
        for j, (before, after) in enumerate(zip(old, self._cuts)):
            if np.array_equal(before, after):
                continue
            c = self._conf[rows, j]
            if before.shape == after.shape:  # a vote changes bin iff it lies between a cut's old and new place
                for lo, hi in zip(np.minimum(before, after), np.maximum(before, after)):
                    moved |= (c > lo) & (c <= hi)
            else:
                moved |= np.searchsorted(before, c, side="left") != np.searchsorted(after, c, side="left")
        if moved.any():
            self._fine.assign(rows[moved], self._refined_ids(rows[moved]))

    def _coarse_posterior(self, rows: np.ndarray) -> np.ndarray:
        slm = self._slm(rows)
        return self.patterns.posterior(pattern_ids(slm, self.n_labels), share_prior(slm, self.n_labels))

    def _posterior(self, rows: np.ndarray) -> np.ndarray:
        """P(true label | the SLMs' votes and confidences): the refined pattern's, else the coarse one's."""
        if self.posterior_model == "logistic" and self.logistic.fitted:
            return self.logistic.posterior(self._features(rows))
        coarse = self._coarse_posterior(rows)
        if self.confidence_bins <= 1 or not self._split:
            return coarse
        fine = self.refined.posterior(self._refined_ids(rows), coarse)
        split = np.isin(pattern_ids(self._slm(rows), self.n_labels), list(self._split))
        return np.where(split[:, None], fine, coarse)  # an undivided pattern: its own (coarse) posterior

    # ---------- per batch ----------

    def plan(self, row_ids: list[int], slm_votes: np.ndarray, uncertainty: list[float | None] | None = None,
             live: list[bool] | None = None, cost_per_call: float | None = None,
             confidence: np.ndarray | None = None) -> BatchPlan:
        """Rows of the batch to ask and to audit; ``live`` False = no text (never asked);
        ``confidence`` [n, k] each vote's probability (None: confidence bins see none, all in one bin)."""
        live_mask = np.ones(len(row_ids), dtype=bool) if live is None else np.asarray(live, dtype=bool)
        self.add_slm_votes(row_ids, slm_votes, confidence)
        self._refit()
        ids = np.asarray(row_ids, dtype=np.int64)
        post = self._posterior(ids)
        if self.routing == "paper":
            u = np.asarray([np.nan if x is None else x for x in (uncertainty or [None] * len(ids))], dtype=np.float64)
            mask, prio = route("paper", uncertainty=u, epsilon=self.epsilon)
        else:
            mask, prio = self._calibrated_route(ids, post)
        mask &= live_mask
        u_all = np.asarray([np.nan if x is None else x for x in (uncertainty or [None] * len(ids))], dtype=np.float64)
        self._mark_hard(ids, np.where(live_mask, u_all, np.nan))
        ask = self.budget.select(mask, np.where(live_mask, prio, 0.0), cost_per_call, share_cap=self._share_cap())
        if self.paper_cap and self.routing != "paper":
            self.held_back += int((mask & ~ask).sum())  # rows the LLM was expected to improve, left to the cap
        if self.target is not None and self.routing != "paper":  # of the cap's choice, what the target needs
            needed = self._needed_for_target(prio, post.max(axis=1), ask, live_mask)
            self.spared += int((ask & ~needed).sum())
            ask &= needed
        audit = self.audit.pick(list(map(int, ids)), live_mask & ~ask) if self.audit is not None else []
        return BatchPlan([int(r) for r in ids[ask]], audit, {int(r): float(c) for r, c in zip(ids, post.max(axis=1))},
                         {int(r): float(p) for r, p in zip(ids, prio)})

    def _calibrated_route(self, ids: np.ndarray, post: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model, pats = ((self.refined, self._refined_ids(ids)) if self.confidence_bins > 1
                       else (self.patterns, pattern_ids(self._slm(ids), self.n_labels)))
        cautious = model.pessimistic(pats, post) if self.explore else post
        return route("calibrated", posterior=cautious, llm_confusion=self.patterns.llm_confusion, margin=self.margin)

    def _needed_for_target(self, gain: np.ndarray, conf: np.ndarray, candidates: np.ndarray, live: np.ndarray
                           ) -> np.ndarray:
        """Of the candidates, the fewest (highest gain first) whose expected gains bring the expected accuracy of
        every row decided so far and of this batch to the target."""
        need = (self.target * (self.expected_rows + int(live.sum())) - self.expected_right
                - float(conf[live].sum()))
        return _fewest_reaching(candidates, gain, need)

    def expected_accuracy(self) -> tuple[float, int]:
        """(mean, rows): the final posterior's expected accuracy of the labels of the rows with text: that of
        the last ``relabel_blocks`` pass when nothing changed since, else a pass over every row seen."""
        totals = self._final_pass()
        right, n = (totals.right, totals.live) if totals is not None else (0.0, 0)
        return (right / n if n else 0.0), n

    def _final_pass(self) -> PassTotals | None:
        """The last ``relabel_blocks`` pass's totals, making that pass if nothing is cached (None under the paper
        rule, whose labels come from no posterior)."""
        if self.routing == "paper":
            return None
        if self._last_pass is None:
            for _ in self.relabel_blocks():
                pass
        return self._last_pass

    def _target_summary(self) -> dict | None:
        if self.target is None or self.routing == "paper":
            return None
        return {"accuracy": self.target, "spared": self.spared}

    def paper_share(self) -> float | None:
        """Share of the judged rows seen that the paper's rule would have asked (None before any)."""
        return self._n_hard / self._n_judged if self._n_judged else None

    def _share_cap(self) -> float | None:
        """The paper cap for this batch's choice (calibrated routing with ``paper_cap``), less the ``reserve``
        kept for the end; else None.

        The paper cap waits for the LLM verdict's rows: the cap sends the LLM to the rows the SLMs split on, and
        the verdict judges it on the rows they agree on, so under the cap an LLM answering one label for
        everything could go unnoticed for the whole run. The calls made meanwhile count against the cap. The
        audit's do not: as under a budget of the user's, they are counted and priced apart (a small, declared
        share: min(100, 2 %) of the rows by default)."""
        if not self.paper_cap or self.routing == "paper":
            return None
        if self.verdict().n < MIN_LLM_VOTES_FOR_VERDICT or self.paper_share() is None:
            return None
        return self.paper_share() * (1.0 - self.reserve)

    def top_up_due(self) -> bool:
        """Is there a reserve to spend at the end? Calibrated routing under the paper cap, beside an LLM not
        judged unreliable (its answers would move nothing)."""
        return self.routing != "paper" and self.paper_cap and self.reserve > 0 and not self.verdict().unreliable

    def top_up_rows(self, blocks: Iterable[list[int]]) -> list[int]:
        """Of the settled rows (no LLM answer, or an audit's) given block by block, those the final posterior
        gains most from asking, as many as the paper cap leaves (the reserve and whatever the batches left
        unspent). An audited row ranks like any other and costs nothing: its answer is in hand
        (``take_top_up`` reuses it). Were audited rows kept out, the top-up would take the least sure rows
        from the settled set but not from the audit sample, which would then be harder than the rows it
        vouches for, and the audit's estimate biased low."""
        if not self.top_up_due():
            return []
        left = self.budget.calls_left(None, share_cap=self.paper_share())
        if left == math.inf or left <= 0:
            return []
        # enough to hold ``left`` paid rows, every audited row above them, and the first paid row past the cap
        keep = int(left) + len(self._audit_llm) + 1
        best_ids, best_gain = np.zeros(0, dtype=np.int64), np.zeros(0)
        for block in blocks:  # a running best ``keep``: one block's posterior in memory at a time
            ids = np.asarray(block, dtype=np.int64)
            if not len(ids):
                continue
            mask, gain = self._calibrated_route(ids, self._posterior(ids))
            best_ids = np.concatenate([best_ids, ids[mask]])
            best_gain = np.concatenate([best_gain, gain[mask]])
            order = np.lexsort((best_ids, -best_gain))[:keep]  # ties: the lower row id first
            best_ids, best_gain = best_ids[order], best_gain[order]
        audited = np.isin(best_ids, np.fromiter(self._audit_llm, dtype=np.int64, count=len(self._audit_llm)))
        over = np.nonzero(np.cumsum(~audited) > left)[0]  # the cut: before the first paid row past the cap
        taken = int(over[0]) if len(over) else len(best_ids)
        best_ids, best_gain = best_ids[:taken], best_gain[:taken]
        if self.target is not None and len(best_ids):
            mean, n = self.expected_accuracy()
            # (the rows it leaves were counted when their batch spared them or the cap held them back)
            best_ids = best_ids[_fewest_reaching(np.ones(len(best_ids), dtype=bool), best_gain, (self.target - mean) * n)]
        return sorted(int(r) for r in best_ids)

    def take_top_up(self, answers: Mapping[int, int], asked: int, cost: float = 0.0,
                    reused: Iterable[int] = ()) -> None:
        """The top-up's answers join the vote book (labels follow in ``relabel_blocks``); the ``asked`` rows
        are charged to the budget, those without a usable answer too. ``reused``: audited rows among the
        chosen ones; their answer, in the vote book already, now labels them, and they leave the audit."""
        self.budget.spend(asked, cost)
        self.add_llm_votes({int(k): int(v) for k, v in answers.items() if int(v) >= 0})
        self.topped_up += asked
        reused = [int(r) for r in reused]
        for rid in reused:  # (a decider restored after the relabel stored them has them out already)
            self._audit_llm.pop(rid, None)
            self._accepted.pop(rid, None)
        self.audit_reused += len(reused)

    def is_audited(self, row_id: int) -> bool:
        """Is the row in the audit sample (its LLM answer checks its label, and does not make it)?"""
        return int(row_id) in self._audit_llm

    def settle(self, row_ids: list[int], answers: Mapping[int, int], audit_answers: Mapping[int, int] | None = None,
               cost: float = 0.0, live: list[bool] | None = None, majority: list[int] | None = None
               ) -> dict[int, Decision]:
        """Final label per row after the LLM's answers (label indices; -1 = it gave none).
        ``majority``: the ensemble's majority per row, the label of settled rows under ``paper``."""
        audit_answers = {int(k): int(v) for k, v in (audit_answers or {}).items()}
        answers = {int(k): int(v) for k, v in answers.items()}
        ids = np.asarray(row_ids, dtype=np.int64)
        live_mask = np.ones(len(ids), dtype=bool) if live is None else np.asarray(live, dtype=bool)
        self.budget.spend(len(answers), cost)
        if self.patterns.llm_confusion is None or self._stale:  # resumed mid-batch: fit as plan() did
            self._refit()
        before = self._posterior(ids)
        self.add_llm_votes({**audit_answers, **answers})
        if self.patterns.llm_confusion is None:  # resumed at this step before any row was seen: not fitted yet
            self.patterns.llm_confusion = self._llm_confusion()
        conf = self.patterns.llm_confusion
        out: dict[int, Decision] = {}
        for k, rid in enumerate(int(r) for r in ids):
            a = answers.get(rid, -1)
            if not live_mask[k]:
                out[rid] = Decision(-1, 0.0, "skipped")
            elif a >= 0:
                after = before[k] * conf[:, a]
                after = after / after.sum() if after.sum() > 0 else before[k]
                out[rid] = self._decide_asked(a, after)
            elif self.routing == "paper":  # the paper: the majority vote (None when too few voted)
                m = -1 if majority is None else int(majority[k])
                out[rid] = Decision(m, float(before[k][m]) if m >= 0 else 0.0, "slm_consensus")
            else:  # settled without the LLM (even "nobody voted" is a pattern the answers calibrate);
                # an audit answer does not change the label
                out[rid] = Decision(int(before[k].argmax()), float(before[k].max()), "slm_consensus")
            if audit_answers.get(rid, -1) >= 0:
                self._audit_llm[rid] = audit_answers[rid]
                self._accepted[rid] = (out[rid].label, out[rid].source)
        self.expected_right += float(sum(out[int(r)].confidence for r, ok in zip(ids, live_mask) if ok))
        self.expected_rows += int(live_mask.sum())
        return out

    def revote_due(self) -> bool:
        """Should the final models vote again on the rows settled before their weights came in? Under the
        calibrated rule, whose labels follow the posterior (the paper's settled label is the vote of the
        moment, and stays so), and not beside an LLM judged unreliable: the students learnt from its answers."""
        return self.routing != "paper" and not self.verdict().unreliable

    def fit_final(self) -> None:
        """Fit the posterior on every answer of the run, before ``revote`` changes any vote: it learns each
        model's reliability from votes cast before the row was trained on (a final model's vote on a row it
        trained on would look more reliable than it is). The graph checkpoints the result, so a run resumed
        in the middle of re-voting labels with the same posterior; from here on it is ``frozen``."""
        self.frozen, self._last_pass = False, None
        self._refit()
        self.frozen = True

    def revote(self, row_ids: list[int], votes: np.ndarray, confidence: np.ndarray) -> None:
        """The final models' votes (and probabilities) on settled rows, in place of those they were settled
        with; ``relabel_blocks`` then labels them by the final posterior (``fit_final``'s: no answer came in
        since, so the logistic posterior is not refitted)."""
        self.add_slm_votes(row_ids, votes, confidence)
        self.revoted += len(row_ids)

    def _decide_asked(self, llm_label: int, post: np.ndarray) -> Decision:
        if self.routing == "paper" or self.answers_final:  # the paper (and a person): the answer is the label
            return Decision(int(llm_label), float(post[llm_label]), "llm_verified")
        label = int(post.argmax())
        return Decision(label, float(post.max()), "llm_verified" if label == llm_label else "llm_overruled")

    def relabel(self) -> dict[int, Decision]:
        """Every seen row's decision under the final model, in one dict (see ``relabel_blocks``)."""
        return {rid: dec for block in self.relabel_blocks() for rid, dec in block.items()}

    def relabel_blocks(self, block_rows: int = 10_000) -> Iterator[dict[int, Decision]]:
        """Every seen row's decision under the final model (calibrated routing only), ``block_rows`` row
        ids at a time: labels made before the LLM was found unreliable, or before the patterns were
        learnt, follow the final posterior. Audited rows keep their label source; their audit answer is
        not used, and the audit estimate then scores their final labels (the ones the accuracy is
        about). By blocks, so a run's last step holds one block of decisions, not one per row."""
        if self.routing == "paper":
            return
        self._refit()
        conf = self.patterns.llm_confusion
        seen = np.nonzero(self._seen)[0]
        right, live = 0.0, 0
        k_slm = len(self.slm_names)
        slm_right, slm_votes = np.zeros(k_slm), np.zeros(k_slm, dtype=np.int64)
        for lo in range(0, len(seen), block_rows):
            rows = seen[lo:lo + block_rows]
            post = self._posterior(rows)
            final = post.copy()  # each row's final posterior: with its LLM answer where that labels it
            with_text = (self._hard[rows] >= 0).tolist()
            out: dict[int, Decision] = {}
            for k, rid in enumerate(int(r) for r in rows):
                a = int(self._votes[rid, -1])
                if a >= 0 and rid not in self._audit_llm:
                    after = post[k] * conf[:, a]
                    if after.sum() > 0:
                        final[k] = after / after.sum()
                    out[rid] = self._decide_asked(a, final[k])
                else:
                    out[rid] = Decision(int(post[k].argmax()), float(post[k].max()), "slm_consensus")
                    if rid in self._accepted:  # the audit judges the label the row ends with
                        self._accepted[rid] = (out[rid].label, out[rid].source)
                if with_text[k]:
                    right += out[rid].confidence
                    live += 1
            slm = self._slm(rows)
            voted = slm >= 0
            p_vote = np.take_along_axis(final, np.where(voted, slm, 0), axis=1)  # [rows, k]: P(vote right)
            slm_right += np.where(voted, p_vote, 0.0).sum(axis=0)
            slm_votes += voted.sum(axis=0)
            yield out
        self._last_pass = PassTotals(right, live, slm_right, slm_votes)

    # ---------- what it learnt ----------

    def _vote_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct (SLM votes, LLM answer) rows seen and how many rows each stands for, from the
        pattern table: what the label model needs, at the size of the patterns, not of the rows."""
        t = self._coarse
        votes = decode_patterns(t.keys, self.n_labels, len(self.slm_names))
        counts = np.concatenate([t.answers, (t.rows - t.answers.sum(axis=1))[:, None]], axis=1)  # last: no answer
        p, a = np.nonzero(counts > 0)
        llm = np.where(a == self.n_labels, -1, a)
        return np.concatenate([votes[p], llm[:, None]], axis=1), counts[p, a].astype(np.float64)

    def _fitted_label_model(self) -> LabelModel | None:
        if self.label_model is None and self._seen.any():
            votes, weight = self._vote_cells()
            self.label_model = LabelModel(self.n_labels, list(self.sources), max_iter=30).fit(votes, row_weight=weight)
        return self.label_model

    def verdict(self, estimates: bool = False) -> Verdict:
        """Is the LLM unreliable? (see the module docstring for the test). ``estimates``: add the label
        model's estimates of the LLM's and the SLM consensus's accuracy (a fit over every row seen: asked
        for by the report and the first unreliable note, not by the per-batch routing)."""
        if self._verdict is not None and (not estimates or self._verdict.llm_accuracy is not None
                                          or self._fitted_label_model() is None):
            return self._verdict
        # The rows judged: answered rows with an SLM vote, audited or unanimous. A row's part depends only
        # on its vote pattern and answer, so the unanimous patterns' answered rows come from the pattern
        # table's counts, and only the (few) audited rows of other patterns are looked at one by one.
        k = len(self.slm_names)
        table = self._coarse
        una = unanimous(decode_patterns(table.keys, self.n_labels, k))  # per pattern of the table
        cells, cell_w = self._vote_cells()
        judged = (cells[:, -1] >= 0) & unanimous(cells[:, :-1])
        audited = np.fromiter(self._audit_llm.keys(), dtype=np.int64, count=len(self._audit_llm))
        audited = audited[self._seen[audited] & (self._votes[audited, -1] >= 0)] if len(audited) else audited
        extra = audited[~una[table.of_row[audited]]] if len(audited) else audited
        extra = extra[(self._slm(extra) >= 0).any(axis=1)] if len(extra) else extra
        slm = np.concatenate([cells[judged, :-1], self._slm(extra)]).reshape(-1, k)
        llm = np.concatenate([cells[judged, -1], self._votes[extra, -1].astype(np.int64)])
        w = np.concatenate([cell_w[judged], np.ones(len(extra))])
        llm_acc = interval = consensus = None
        model = self._fitted_label_model() if estimates else None
        if model is not None:
            lv = model.llm_verdict(cells, LLM, row_weight=cell_w)
            llm_acc, interval, consensus = lv.llm_accuracy, lv.llm_interval, lv.slm_consensus_accuracy
        n = int(round(w.sum()))
        if n < MIN_LLM_VOTES_FOR_VERDICT:
            self._verdict = Verdict(False, n, None, None, llm_acc, interval, consensus)
            return self._verdict
        shares = share_prior(slm, self.n_labels)
        slm_label = shares.argmax(axis=1)
        hits = (slm_label == llm).astype(np.float64)
        agree = float(np.dot(w, hits)) / n
        f_slm = np.bincount(slm_label, weights=w, minlength=self.n_labels) / n
        f_llm = np.bincount(llm, weights=w, minlength=self.n_labels) / n
        indep = float(np.dot(f_slm, f_llm))
        chance = 1.0 / self.n_labels
        q = self.llm_accuracy

        def expected_at(a: np.ndarray | float) -> np.ndarray:  # agreement of a q-LLM with labels right with p. a
            return np.broadcast_to(a * q + (1 - a) * (1 - q) / max(self.n_labels - 1, 1), hits.shape)

        # halfway from chance to the vote share (see the module docstring: the SLMs may be the weak side)
        per_row = expected_at(chance + (shares.max(axis=1) - chance) / 2)
        expected = float(np.dot(w, per_row)) / n
        failed: tuple[int, int, float, float] | None = None
        if _below(hits, per_row, w):
            failed = (OVERALL, n, agree, expected)
        for c in range(self.n_labels):  # per SLM label, at chance: an LLM stuck on one label fails on the others
            in_c = slm_label == c
            n_c = float(w[in_c].sum())
            if failed is None and n_c >= MIN_PER_CLASS and _below(hits[in_c], expected_at(chance)[in_c], w[in_c]):
                failed = (c, int(round(n_c)), float(np.dot(w[in_c], hits[in_c])) / n_c, chance)
        low = failed is not None
        self._verdict = Verdict(low, n, agree, indep, llm_acc, interval, consensus, expected,
                                *(failed or (None, None, None, None)))
        return self._verdict

    def reliability(self) -> dict[str, dict]:
        """Per source, the label model's estimate (``accuracy``, its interval and confusion) and, under calibrated
        routing, the final posterior's (``posterior_accuracy``: the mean probability it gives each SLM's votes).

        The label model assumes the sources err independently: SLMs that err together look better than they
        are, and an LLM that disagrees with them worse (on movie-review sentences it rated two lexicons that are
        right 0.64 of the time at 0.83, and a 0.9 LLM at 0.59). The posterior is the one that labels, anchored by
        the LLM's answers at its assumed accuracy, which is all it says of the LLM (``assumed_accuracy``)."""
        model = self._fitted_label_model()
        if model is None:
            return {}
        out = {name: rel.as_dict() for name, rel in model.reliability().items()}
        totals = self._final_pass()
        for j, name in enumerate(self.slm_names):
            if name in out:
                votes = int(totals.slm_votes[j]) if totals is not None else 0
                out[name]["posterior_accuracy"] = round(float(totals.slm_right[j]) / votes, 4) if votes else None
                out[name]["posterior_votes"] = votes
        if LLM in out:  # the posterior takes the LLM at its assumed accuracy; one judged unreliable, at none
            out[LLM]["posterior_accuracy"] = None
            trusted = self.routing != "paper" and not self.verdict().unreliable
            out[LLM]["assumed_accuracy"] = self.llm_accuracy if trusted else None
        return out

    def audit_estimate(self) -> dict[str, dict]:
        """Accuracy of the settled labels per label source, from the audit (see ``audit.py``).

        q is the LLM accuracy the routing assumes (``llm_accuracy``), or for an LLM judged
        unreliable its answers' frequencies (then nothing can be said: interval [0, 1]). q is an
        assumption, not a measurement, so the interval carries only the agreement's uncertainty and
        holds *if the LLM is as accurate as assumed*; the report says so. Beside it, the posterior's own
        expectation on the same rows (``posterior_expects``): outside the interval, the run's expected accuracy
        is not to be trusted.
        """
        if not self._audit_llm or not self._accepted:
            return {}
        if self.verdict().unreliable:
            q = 1.0 / self.n_labels  # its answers carry no information: nothing to correct against
        else:
            conf = self.patterns.llm_confusion
            prior = self._coarse.answers.sum(axis=0).astype(float) + 1.0  # the answers on the rows seen
            q = float(np.dot(prior / prior.sum(), np.diag(conf)))
        ids = np.fromiter(self._accepted, dtype=np.int64, count=len(self._accepted))
        post = self._posterior(ids)  # the SLMs' posterior: an audit answer checks a label and does not make it
        rows = [(src, lab, self._audit_llm[r], float(post[k, lab]) if lab >= 0 else 0.0)
                for k, (r, (lab, src)) in enumerate(self._accepted.items())]
        return estimate_by_source(rows, q, (q, q), self.n_labels)

    # ---------- checkpoint ----------

    def state_dict(self) -> dict:
        return {"budget": self.budget.state_dict(), "audit": None if self.audit is None else self.audit.state_dict(),
                "unreliable_noted": self.unreliable_noted, "audit_usage": dict(self.audit_usage),
                "cuts": [c.tolist() for c in self._cuts], "cuts_at": self._cuts_at,
                "logistic": self.logistic.state_dict(), "logistic_at": self._logistic_at,
                "held_back": self.held_back, "revoted": self.revoted, "topped_up": self.topped_up,
                "audit_reused": self.audit_reused,
                "frozen": self.frozen, "expected_right": self.expected_right, "expected_rows": self.expected_rows,
                "spared": self.spared}

    def restore(self, state: Mapping, book: Iterable[dict]) -> None:
        """Back to a checkpoint: counters from ``state``; votes from ``book``, one dict per stored
        row: row_id, slm (list of label indices, -1 abstain), conf (each vote's probability; absent =
        0), llm (index or -1), audit (bool), label (index), source, uncertainty (U; absent or None = not
        judged, as a row without text)."""
        for rec in book:
            rid = int(rec["row_id"])
            self._votes[rid, :-1] = rec["slm"]
            if rec.get("conf") is not None:
                self._conf[rid] = rec["conf"]
            self._votes[rid, -1] = rec.get("llm", -1)
            self._seen[rid] = True
            u = rec.get("uncertainty")
            self._hard[rid] = -1 if u is None else int(float(u) >= self.epsilon)
            # an audited row the top-up reused is labelled by its answer now (its source says so): out of the audit
            if rec.get("audit") and rec.get("llm", -1) >= 0 and rec["source"] == "slm_consensus":
                self._audit_llm[rid] = int(rec["llm"])
                self._accepted[rid] = (int(rec["label"]), rec["source"])
        if state.get("budget"):
            self.budget = LLMBudget.from_state(state["budget"])
        if state.get("audit") is not None:
            self.audit = AuditSampler.from_state(state["audit"])
        self.unreliable_noted = bool(state.get("unreliable_noted", False))
        self.held_back = int(state.get("held_back", 0))
        self.revoted = int(state.get("revoted", 0))
        self.topped_up = int(state.get("topped_up", 0))
        self.audit_reused = int(state.get("audit_reused", 0))
        self.frozen = bool(state.get("frozen", False))
        self.expected_right = float(state.get("expected_right", 0.0))
        self.expected_rows = int(state.get("expected_rows", 0))
        self.spared = int(state.get("spared", 0))
        self._n_hard = int((self._hard == 1).sum())
        self._n_judged = int((self._hard >= 0).sum())
        if state.get("audit_usage"):
            self.audit_usage = dict(state["audit_usage"])
        if state.get("cuts") is not None and len(state["cuts"]) == len(self.slm_names):
            # the cuts the run had (above CUTS_EVERY_BATCH_UPTO rows they are not refitted on every batch)
            self._cuts = [np.asarray(c, dtype=np.float64) for c in state["cuts"]]
            self._cuts_at = int(state.get("cuts_at", 0))
        if state.get("logistic") is not None:  # the posterior the run had (refitted on a schedule, like the cuts)
            self.logistic.load_state_dict(state["logistic"])
            self._logistic_at = int(state.get("logistic_at", -1))
        self._rebuild_tables()
        if self._seen.any():
            self._refit()
