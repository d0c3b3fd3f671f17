"""A Dawid–Skene label model: how far to trust each voter, learnt from the votes themselves.

Counting votes as equals cannot tell a 0.93 voter from a 0.62 one, and treating the LLM as an
oracle lets a bad LLM overwrite good consensus. This model estimates, for every source (each SLM
and the LLM as one more source), a confusion matrix P(vote = y | true = c) and combines the votes
of a row into a posterior over its true label, assuming the sources err independently given the
true label.

Design choices, and why:
- **Shrinkage toward one coin.** Each confusion row c is estimated as
  (soft counts[c, :] + s * one_coin[c, :]) / (soft counts[c].sum() + s), where one_coin is the
  accuracy-only matrix (accuracy a on the diagonal, (1 - a) / (L - 1) elsewhere) and a is the
  source's pooled accuracy under a weak Beta prior. With few votes a source behaves like a single
  accuracy; with many, its per-class errors (e.g. an LLM that answers one label for everything)
  show.
- **Fit mask.** A fine-tuned student's votes on rows it was trained on copy the LLM labels it
  learnt from; they would confirm the LLM twice. Votes with ``fit_mask`` False are left out of
  both the E- and the M-step while fitting (``posterior`` takes the same kind of mask).
- **Anchors.** Labels known from outside (human review) enter as a source of fixed accuracy
  ``weight`` for that row (weight 1 clamps the row).
- **Deterministic.** Initialised from the (weighted) majority vote, a fixed number of EM steps or
  until the parameters stop moving; no randomness. Log-space, vectorised over rows: one gather
  per source per step, so 100k rows fit in well under a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

_TINY = 1e-12


@dataclass
class SourceReliability:
    """What the model believes about one source."""

    name: str
    accuracy: float  # P(vote = truth), weighted by the estimated class prior
    n_votes: float  # votes the estimate rests on (masked votes excluded)
    confusion: list[list[float]]  # [true][vote]
    accuracy_interval: tuple[float, float]  # Wilson 95 % on n_votes (ignores label uncertainty)

    def as_dict(self) -> dict:
        return {"name": self.name, "accuracy": round(self.accuracy, 4), "n_votes": round(self.n_votes, 1),
                "accuracy_interval": [round(x, 4) for x in self.accuracy_interval],
                "confusion": [[round(x, 4) for x in row] for row in self.confusion]}


@dataclass
class LLMVerdict:
    """Whether the LLM source is estimated worse than what the SLMs decide without it."""

    llm_accuracy: float
    llm_interval: tuple[float, float]
    slm_consensus_accuracy: float
    n_llm_votes: float
    unreliable: bool

    def as_dict(self) -> dict:
        return {"llm_accuracy": round(self.llm_accuracy, 4), "llm_interval": [round(x, 4) for x in self.llm_interval],
                "slm_consensus_accuracy": round(self.slm_consensus_accuracy, 4),
                "n_llm_votes": round(self.n_llm_votes, 1), "unreliable": self.unreliable}


def wilson(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval; (0, 1) when there is nothing to go on."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def one_coin(accuracy: float, n_labels: int) -> np.ndarray:
    """The accuracy-only confusion matrix: right with ``accuracy``, errors spread evenly."""
    if n_labels == 1:
        return np.ones((1, 1))
    off = (1.0 - accuracy) / (n_labels - 1)
    mat = np.full((n_labels, n_labels), off)
    np.fill_diagonal(mat, accuracy)
    return mat


@dataclass
class LabelModel:
    """Dawid–Skene with per-source confusion matrices shrunk toward a one-coin model.

    ``prior_strength``: pseudo-votes per class row pulling the confusion toward one coin.
    ``accuracy_prior``: (mean, pseudo-votes) of the Beta prior on each source's pooled accuracy;
    the default mean is halfway between chance and perfect, i.e. "better than chance, not known
    how much". ``source_priors`` overrides it per source (e.g. the LLM).
    """

    n_labels: int
    source_names: list[str]
    prior_strength: float = 4.0
    accuracy_prior: tuple[float, float] | None = None
    source_priors: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_iter: int = 50
    tol: float = 1e-5
    log_confusion: np.ndarray | None = None  # [m, L, L]
    log_class_prior: np.ndarray | None = None  # [L]
    counts: np.ndarray | None = None  # [m, L, L] soft counts of the last fit
    n_iter: int = 0

    def __post_init__(self) -> None:
        if self.n_labels < 1:
            raise ValueError("a label model needs at least one label")
        if self.accuracy_prior is None:
            self.accuracy_prior = (0.5 * (1.0 + 1.0 / self.n_labels), 2.0)

    @property
    def n_sources(self) -> int:
        return len(self.source_names)

    # ---------- fitting ----------

    def fit(self, votes: np.ndarray, fit_mask: np.ndarray | None = None, vote_weight: np.ndarray | None = None,
            anchors: Mapping[int, tuple[int, float]] | None = None, warm_start: bool = False,
            row_weight: np.ndarray | None = None) -> LabelModel:
        """Estimate class prior and confusions by EM over ``votes`` [n, m] (-1 = abstain).

        ``row_weight`` [n]: how many rows each row stands for (rows with equal votes share their
        posterior, so a fit over the distinct vote rows and their counts equals the fit over all rows).

        ``vote_weight`` [n, m] in [0, 1] scales a vote's evidence (0 = as if it abstained);
        ``anchors`` maps row -> (label index, weight in (0, 1]) for labels known from outside.
        ``warm_start`` starts from the current parameters (an online refit after one more batch).
        """
        v, w = self._prepare(votes, fit_mask, vote_weight)
        rw = None if row_weight is None else np.asarray(row_weight, dtype=np.float64).reshape(len(v))
        if warm_start and self.log_confusion is not None:
            post = self._posterior(v, w, anchors)
        else:
            post = self._majority_init(v, w, anchors)
        prev = None
        self.n_iter = 0
        for it in range(self.max_iter):
            self._m_step(v, w, post if rw is None else post * rw[:, None])
            post = self._posterior(v, w, anchors)
            self.n_iter = it + 1
            cur = np.exp(self.log_confusion)
            if prev is not None and float(np.abs(cur - prev).max()) < self.tol:
                break
            prev = cur
        return self

    def _prepare(self, votes: np.ndarray, mask: np.ndarray | None, weight: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
        v = np.asarray(votes, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != self.n_sources:
            raise ValueError(f"votes must be [n, {self.n_sources}], got {v.shape}")
        if (v >= self.n_labels).any() or (v < -1).any():
            raise ValueError("a vote is outside -1..n_labels-1")
        w = (v >= 0).astype(np.float64)
        if weight is not None:
            w = w * np.clip(np.asarray(weight, dtype=np.float64), 0.0, 1.0)
        if mask is not None:
            w = w * np.asarray(mask, dtype=bool)
        return v, w

    def _majority_init(self, v: np.ndarray, w: np.ndarray, anchors) -> np.ndarray:
        n = v.shape[0]
        post = np.full((n, self.n_labels), 1e-3)
        for j in range(self.n_sources):
            voted = w[:, j] > 0
            post[np.nonzero(voted)[0], v[voted, j]] += w[voted, j]
        # tie-break toward the lower index deterministically
        post += np.linspace(1e-6, 0.0, self.n_labels)[None, :]
        post /= post.sum(axis=1, keepdims=True)
        return self._apply_anchors(np.log(post), anchors, normalise=True)

    def _m_step(self, v: np.ndarray, w: np.ndarray, post: np.ndarray) -> None:
        L, m = self.n_labels, self.n_sources
        counts = np.zeros((m, L, L))
        for j in range(m):
            voted = w[:, j] > 0
            if not voted.any():
                continue
            onehot = np.zeros((int(voted.sum()), L))
            onehot[np.arange(onehot.shape[0]), v[voted, j]] = w[voted, j]
            counts[j] = post[voted].T @ onehot
        self.counts = counts
        log_conf = np.zeros((m, L, L))
        for j, name in enumerate(self.source_names):
            mean, strength = self.source_priors.get(name, self.accuracy_prior)
            total = counts[j].sum()
            acc = (np.trace(counts[j]) + mean * strength) / (total + strength)
            prior = one_coin(float(acc), L)
            mat = (counts[j] + self.prior_strength * prior) / (counts[j].sum(axis=1, keepdims=True) + self.prior_strength)
            log_conf[j] = np.log(np.maximum(mat, _TINY))
        self.log_confusion = log_conf
        class_counts = post.sum(axis=0) + 1.0
        self.log_class_prior = np.log(class_counts / class_counts.sum())

    # ---------- inference ----------

    def _log_likelihood(self, v: np.ndarray, w: np.ndarray, sources: np.ndarray | None = None) -> np.ndarray:
        n = v.shape[0]
        ll = np.tile(self.log_class_prior, (n, 1))
        for j in range(self.n_sources) if sources is None else sources:
            col = np.where(v[:, j] >= 0, v[:, j], 0)
            # log P(vote = col | true = c) for every c: [n, L]
            ll += w[:, j:j + 1] * self.log_confusion[j][:, col].T
        return ll

    def _apply_anchors(self, ll: np.ndarray, anchors, normalise: bool) -> np.ndarray:
        if anchors:
            L = self.n_labels
            rows = np.fromiter(anchors.keys(), dtype=np.int64, count=len(anchors))
            vals = np.array(list(anchors.values()), dtype=np.float64).reshape(len(anchors), 2)
            labels, weights = vals[:, 0].astype(np.int64), np.clip(vals[:, 1], 0.0, 1.0)
            like = np.repeat(((1.0 - weights) / max(L - 1, 1))[:, None], L, axis=1) if L > 1 \
                else np.ones((len(rows), 1))
            like[np.arange(len(rows)), labels] = weights
            np.add.at(ll, rows, np.log(np.maximum(like, _TINY)))
        if not normalise:
            return ll
        ll = ll - ll.max(axis=1, keepdims=True)
        p = np.exp(ll)
        return p / p.sum(axis=1, keepdims=True)

    def _posterior(self, v: np.ndarray, w: np.ndarray, anchors=None, sources=None) -> np.ndarray:
        return self._apply_anchors(self._log_likelihood(v, w, sources), anchors, normalise=True)

    def _require_fit(self) -> None:
        if self.log_confusion is None:
            raise RuntimeError("fit the label model first")

    def posterior(self, votes: np.ndarray, mask: np.ndarray | None = None, vote_weight: np.ndarray | None = None,
                  anchors: Mapping[int, tuple[int, float]] | None = None,
                  exclude: list[str] | None = None) -> np.ndarray:
        """P(true label | votes) per row, [n, L]; ``exclude`` leaves the named sources out."""
        self._require_fit()
        v, w = self._prepare(votes, mask, vote_weight)
        sources = None
        if exclude:
            sources = np.array([j for j, s in enumerate(self.source_names) if s not in exclude], dtype=np.int64)
        return self._posterior(v, w, anchors, sources)

    # ---------- what it learnt ----------

    def confusion(self, source: str) -> np.ndarray:
        self._require_fit()
        return np.exp(self.log_confusion[self.source_names.index(source)])

    def class_prior(self) -> np.ndarray:
        self._require_fit()
        return np.exp(self.log_class_prior)

    def reliability(self) -> dict[str, SourceReliability]:
        """Per source: prior-weighted accuracy, votes behind it, confusion and a rough interval."""
        self._require_fit()
        pi = self.class_prior()
        out = {}
        for j, name in enumerate(self.source_names):
            conf = np.exp(self.log_confusion[j])
            acc = float(np.dot(pi, np.diag(conf)))
            n = float(self.counts[j].sum()) if self.counts is not None else 0.0
            out[name] = SourceReliability(name, acc, n, conf.tolist(), wilson(acc * n, n))
        return out

    def llm_verdict(self, votes: np.ndarray, llm_source: str, mask: np.ndarray | None = None,
                    row_weight: np.ndarray | None = None) -> LLMVerdict:
        """Is the LLM estimated less accurate than the SLMs' own combined decision?

        The SLM consensus accuracy is the expected accuracy (under the full posterior, LLM
        included) of the label the SLMs would give without the LLM, over the rows at least one
        SLM voted on; comparing it with the LLM's estimated accuracy tells whether asking the LLM
        to overrule them would, on average, make labels worse.
        """
        self._require_fit()
        v = np.asarray(votes, dtype=np.int64)
        full = self.posterior(v, mask)
        slm_only = self.posterior(v, mask, exclude=[llm_source])
        j = self.source_names.index(llm_source)
        others = np.delete(v, j, axis=1)
        has_slm = (others >= 0).any(axis=1)
        pick = slm_only.argmax(axis=1)
        rw = np.ones(len(v)) if row_weight is None else np.asarray(row_weight, dtype=np.float64)
        right = full[np.arange(len(v)), pick]
        consensus = float(np.dot(right[has_slm], rw[has_slm]) / rw[has_slm].sum()) if has_slm.any() else 0.0
        rel = self.reliability()[llm_source]
        return LLMVerdict(rel.accuracy, rel.accuracy_interval, consensus, rel.n_votes, rel.accuracy < consensus)

    # ---------- checkpoint ----------

    def state_dict(self) -> dict:
        """The fitted parameters as plain lists (a few hundred numbers): enough to warm-start."""
        return {"n_labels": self.n_labels, "source_names": list(self.source_names),
                "log_confusion": None if self.log_confusion is None else self.log_confusion.tolist(),
                "log_class_prior": None if self.log_class_prior is None else self.log_class_prior.tolist(),
                "counts": None if self.counts is None else self.counts.tolist()}

    def load_state_dict(self, state: Mapping) -> LabelModel:
        if list(state["source_names"]) != list(self.source_names) or state["n_labels"] != self.n_labels:
            raise ValueError("label model state is for other sources or labels")
        for key in ("log_confusion", "log_class_prior", "counts"):
            setattr(self, key, None if state.get(key) is None else np.asarray(state[key], dtype=np.float64))
        return self


def majority_vote(votes: np.ndarray, n_labels: int) -> np.ndarray:
    """Plain vote count (ties to the lowest index, -1 when nobody voted): the baseline to beat."""
    v = np.asarray(votes, dtype=np.int64)
    counts = np.zeros((v.shape[0], n_labels))
    rows, cols = np.nonzero(v >= 0)
    np.add.at(counts, (rows, v[rows, cols]), 1)
    return np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)
