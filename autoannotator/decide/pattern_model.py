"""Confidence per SLM vote pattern, learnt from the LLM's answers: no independence among the SLMs assumed.

Dawid–Skene assumes the voters err independently. Lexicon scorers do not: on the UCI sentences,
when vader and textblob both say "positive" the row is positive 90 % of the time, yet an
independent-errors model puts that agreement at 99.9 % (and then judges a 0.9 LLM that disagrees
with it as a 0.8 one). So the posterior used for routing and labels is estimated per *vote
pattern* (the tuple of the SLMs' votes, abstentions included):

    theta_k ~ Dirichlet(s0 * m_k)       m_k: the label model's posterior for pattern k (a weak prior)
    LLM answer a on a row of pattern k:  P(a | true c) = C[c, a]

fitted by EM over the rows the LLM answered (routed rows and the random audit rows). Rows the LLM
never saw add nothing about theta_k (their truth is as uncertain as theta_k itself), so only
answered rows enter; the asked rows are chosen by their votes, which is fine for a likelihood
(missing at random given the pattern).

The LLM's confusion C and theta cannot both be identified from (pattern, answer) pairs alone: a
sharper pattern and a worse LLM explain the same table. The gap is closed by C's prior: a one-coin
accuracy prior ``llm_prior`` = (mean, pseudo-votes) and per-class shrinkage toward it. Its default
(0.8, 20) says "the LLM is fairly good, as much as 20 answers' worth of belief"; per-class
structure such as an LLM answering one label for everything still shows and makes C uninformative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autoannotator.decide.label_model import one_coin, wilson

_TINY = 1e-12


def pattern_ids(votes: np.ndarray, n_labels: int) -> np.ndarray:
    """One integer per row for its tuple of votes (-1 = abstain counts as a value)."""
    v = np.asarray(votes, dtype=np.int64) + 1
    base = n_labels + 1
    ids = np.zeros(v.shape[0], dtype=np.int64)
    for j in range(v.shape[1]):
        ids = ids * base + v[:, j]
    return ids


def decode_patterns(ids: np.ndarray, n_labels: int, n_voters: int) -> np.ndarray:
    """``pattern_ids``'s inverse: [P] ids -> [P, n_voters] votes (-1 = abstain)."""
    rest = np.asarray(ids, dtype=np.int64).copy()
    base = n_labels + 1
    out = np.zeros((len(rest), n_voters), dtype=np.int64)
    for j in range(n_voters - 1, -1, -1):
        out[:, j] = rest % base - 1
        rest //= base
    return out


class PatternTable:
    """Rows per vote pattern and the LLM's answers per pattern, kept up to date as rows arrive, so a
    refit reads a table the size of the patterns seen instead of scanning every row seen (which made
    a run's per-batch cost grow with its rows). A row may change pattern (its votes re-added) or
    answer; its counts move with it."""

    def __init__(self, n_rows: int, n_labels: int) -> None:
        self.n_labels = n_labels
        self.index: dict[int, int] = {}
        self._keys = np.zeros(16, dtype=np.int64)
        self._rows = np.zeros(16, dtype=np.int64)
        self._answers = np.zeros((16, n_labels), dtype=np.int64)
        # 6 bytes a row: what the tables add to the decider's per-row memory
        self.of_row = np.full(n_rows, -1, dtype=np.int32)  # pattern index per row, -1 = not in the table
        self.answer_of_row = np.full(n_rows, -1, dtype=np.int16)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def keys(self) -> np.ndarray:
        return self._keys[:len(self)]

    @property
    def rows(self) -> np.ndarray:
        return self._rows[:len(self)]

    @property
    def answers(self) -> np.ndarray:
        return self._answers[:len(self)]

    def _indices(self, keys: np.ndarray) -> np.ndarray:
        for k in np.unique(keys).tolist():
            if k not in self.index:
                i = len(self.index)
                if i == len(self._keys):
                    self._keys = np.concatenate([self._keys, np.zeros_like(self._keys)])
                    self._rows = np.concatenate([self._rows, np.zeros_like(self._rows)])
                    self._answers = np.concatenate([self._answers, np.zeros_like(self._answers)])
                self.index[k] = i
                self._keys[i] = k
        return np.fromiter((self.index[k] for k in keys.tolist()), dtype=np.int64, count=len(keys))

    def _count(self, rows: np.ndarray, sign: int) -> None:
        p = self.of_row[rows]
        rows, p = rows[p >= 0], p[p >= 0]
        np.add.at(self._rows, p, sign)
        a = self.answer_of_row[rows]
        np.add.at(self._answers, (p[a >= 0], a[a >= 0]), sign)

    def assign(self, rows: np.ndarray, keys: np.ndarray) -> None:
        """Rows ``rows`` now have patterns ``keys`` (rows unique)."""
        rows = np.asarray(rows, dtype=np.int64)
        self._count(rows, -1)
        self.of_row[rows] = self._indices(np.asarray(keys, dtype=np.int64))
        self._count(rows, +1)

    def answer(self, rows: np.ndarray, answers: np.ndarray) -> None:
        """The LLM's answers (-1 = none) on ``rows`` (rows unique; a row not assigned yet is counted
        once it is)."""
        rows = np.asarray(rows, dtype=np.int64)
        self._count(rows, -1)
        self.answer_of_row[rows] = np.asarray(answers, dtype=np.int64)
        self._count(rows, +1)


@dataclass
class PatternModel:
    n_labels: int
    s0: float = 2.0  # pseudo-rows of the label-model prior per pattern
    llm_prior: tuple[float, float] = (0.8, 20.0)
    fixed_llm: bool = False  # True: keep llm_confusion as given (or one coin at llm_prior's mean)
    prior_strength: float = 4.0  # per-class shrinkage of C toward one coin
    max_iter: int = 50
    tol: float = 1e-6
    llm_confusion: np.ndarray | None = None
    theta: dict[int, np.ndarray] = field(default_factory=dict)
    prior: dict[int, np.ndarray] = field(default_factory=dict)
    llm_n: float = 0.0
    evidence: dict[int, float] = field(default_factory=dict)  # pattern -> answers behind its theta

    def fit(self, patterns: np.ndarray, prior_post: np.ndarray, llm_answers: np.ndarray) -> PatternModel:
        """``patterns`` [n] pattern ids of all rows seen, ``prior_post`` [n, L] the label model's
        posterior from the SLM votes (same for equal patterns), ``llm_answers`` [n] (-1 = none)."""
        pats = np.asarray(patterns)
        answers = np.asarray(llm_answers, dtype=np.int64)
        uniq, first, inverse = np.unique(pats, return_index=True, return_inverse=True)
        asked = answers >= 0
        table = np.zeros((len(uniq), self.n_labels), dtype=np.int64)
        np.add.at(table, (inverse[asked], answers[asked]), 1)
        return self.fit_table(uniq, np.asarray(prior_post, dtype=np.float64)[first], table)

    def fit_table(self, keys: np.ndarray, prior: np.ndarray, answer_counts: np.ndarray) -> PatternModel:
        """The same fit from its sufficient statistics: ``keys`` [P] pattern ids, ``prior`` [P, L] their
        prior posteriors, ``answer_counts`` [P, L] how many answered rows of each pattern got each answer.
        Rows of one pattern with one answer share their E-step, so EM runs over the P x L cells, not the
        rows: a refit costs the same at 1,000 rows seen as at 1,000,000 (``PatternTable`` keeps the counts)."""
        L = self.n_labels
        uniq = np.asarray(keys, dtype=np.int64)
        m = np.asarray(prior, dtype=np.float64).reshape(len(uniq), L)
        n_cell = np.asarray(answer_counts, dtype=np.float64).reshape(len(uniq), L)
        self.prior = {int(k): m[i] for i, k in enumerate(uniq)}
        cell_p, cell_a = np.nonzero(n_cell > 0)
        w = n_cell[cell_p, cell_a][:, None]
        theta = m.copy()
        mean, strength = self.llm_prior
        conf = one_coin(mean, L) if self.llm_confusion is None or self.llm_confusion.shape != (L, L) \
            else self.llm_confusion.copy()
        prev = None
        for _ in range(self.max_iter if len(cell_p) else 0):
            # E: truth posterior of the answered rows of each (pattern, answer) cell
            r = theta[cell_p] * conf[:, cell_a].T
            r /= np.maximum(r.sum(axis=1, keepdims=True), _TINY)
            r *= w
            # M: patterns
            counts = np.zeros_like(theta)
            np.add.at(counts, cell_p, r)
            theta = (self.s0 * m + counts) / (self.s0 + counts.sum(axis=1, keepdims=True))
            if self.fixed_llm:  # the confusion is given (set llm_confusion before fitting)
                continue
            # M: LLM confusion, shrunk toward one coin with the accuracy prior
            cc = np.zeros((L, L))
            for a in range(L):
                cc[:, a] = r[cell_a == a].sum(axis=0)
            acc = (np.trace(cc) + mean * strength) / (cc.sum() + strength)
            conf = (cc + self.prior_strength * one_coin(float(acc), L)) / (cc.sum(axis=1, keepdims=True)
                                                                           + self.prior_strength)
            if prev is not None and np.abs(conf - prev).max() < self.tol:
                break
            prev = conf
        self.llm_confusion = conf
        self.llm_n = float(n_cell.sum())
        self.theta = {int(k): theta[i] for i, k in enumerate(uniq)}
        n_answers = n_cell.sum(axis=1)
        self.evidence = {int(k): float(n_answers[i]) for i, k in enumerate(uniq)}
        return self

    def pessimistic(self, patterns: np.ndarray, post: np.ndarray) -> np.ndarray:
        """Posteriors with the top label lowered by one posterior standard deviation of its
        probability (Dirichlet with s0 + the pattern's answers rows behind it). Routing on these
        keeps asking about a pattern until its answers show it is reliable: a pattern that looked
        confident by luck after a few answers is not settled for good."""
        p = np.asarray(post, dtype=np.float64).copy()
        n = np.array([self.evidence.get(int(k), 0.0) for k in np.asarray(patterns)]) + self.s0
        top = p.argmax(axis=1)
        rows = np.arange(len(p))
        pt = p[rows, top]
        lowered = np.maximum(pt - np.sqrt(pt * (1 - pt) / (n + 1)), 1.0 / self.n_labels)
        rest = 1.0 - pt
        scale = np.where(rest > 0, (1.0 - lowered) / np.maximum(rest, 1e-12), 0.0)
        out = p * scale[:, None]
        out[rows, top] = lowered
        even = rest <= 0  # all mass on the top label: spread what was taken evenly
        if even.any() and self.n_labels > 1:
            out[even] = ((1.0 - lowered[even]) / (self.n_labels - 1))[:, None]
            out[even, top[even]] = lowered[even]
        return out

    def posterior(self, patterns: np.ndarray, prior_post: np.ndarray) -> np.ndarray:
        """P(true label | SLM votes) per row: the pattern's theta, or the prior for a new pattern."""
        out = np.asarray(prior_post, dtype=np.float64).copy()
        for i, k in enumerate(np.asarray(patterns)):
            t = self.theta.get(int(k))
            if t is not None:
                out[i] = t
        return out

    def with_llm(self, post: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """Update row posteriors with the LLM's answers (-1 = none)."""
        out = np.asarray(post, dtype=np.float64).copy()
        a = np.asarray(answers, dtype=np.int64)
        has = a >= 0
        out[has] *= self.llm_confusion[:, a[has]].T
        out[has] /= np.maximum(out[has].sum(axis=1, keepdims=True), _TINY)
        return out

    def llm_accuracy(self, class_prior: np.ndarray) -> tuple[float, tuple[float, float]]:
        acc = float(np.dot(class_prior, np.diag(self.llm_confusion)))
        return acc, wilson(acc * self.llm_n, self.llm_n)

    def state_dict(self) -> dict:
        return {"llm_confusion": None if self.llm_confusion is None else self.llm_confusion.tolist()}

    def load_state_dict(self, state: dict) -> PatternModel:
        if state.get("llm_confusion") is not None:
            self.llm_confusion = np.asarray(state["llm_confusion"], dtype=np.float64)
        return self
