"""A posterior shared across vote patterns: multinomial logistic regression on each SLM's vote and confidence,
learnt from the LLM's (noisy) answers.

The pattern model (``pattern_model.py``) learns each vote pattern on its own: with three voters, two labels
and two confidence bins that is dozens of patterns, most of them with a handful of answers, so under a budget
the rows are ranked by thin, noisy counts, and a pattern that looks good on a lucky few answers is settled for
good. A logistic model shares what it learns: "the student at 0.95 is usually right" holds whichever way the
lexicons voted, and confidences enter as numbers, not as two bins.

Features per SLM j and label c: [vote_j == c] x (1, p_j, p_j^2) with p_j the vote's probability, plus an
abstention flag per SLM. The LLM's answer is a noisy copy of the truth with the confusion C (one coin at the
assumed accuracy, or the estimate for an LLM judged unreliable), so the fit is EM: the E-step turns each
answer into a soft truth, P(y = c | x, a) ∝ P(c | x) C[c, a]; the M-step refits a weighted logistic
regression on those soft labels. The answered rows are chosen by the routing rule from their votes, which
the model conditions on, so the choice does not bias P(y | x) (it only shifts where the data lie).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

MIN_ANSWERS = 30  # fewer answered rows than this (or one label only): not fitted, the caller falls back
# EM runs to its fixed point: stopped after a handful of steps the posterior stays pulled towards the flat
# first E-step, i.e. under-confident (3.4 points on a synthetic 3-voter stream after 5 steps, 0.9 at the
# fixed point; benchmarks/decide_calibration_replay.py), and under a budget or a target that means asking
# the LLM about rows the votes had already settled.
EM_MAX_STEPS = 50
EM_TOL = 1e-4  # largest change of any soft label between two E-steps


def vote_features(votes: np.ndarray, confidence: np.ndarray, n_labels: int) -> np.ndarray:
    """[n, k] votes (-1 = abstain) and their probabilities -> [n, k * (3 * L + 1)] features."""
    v = np.asarray(votes, dtype=np.int64)
    p = np.asarray(confidence, dtype=np.float64).reshape(v.shape)
    cols = []
    for j in range(v.shape[1]):
        for c in range(n_labels):
            hit = (v[:, j] == c).astype(np.float64)
            cols += [hit, hit * p[:, j], hit * p[:, j] ** 2]
        cols.append((v[:, j] < 0).astype(np.float64))
    return np.stack(cols, axis=1) if cols else np.zeros((len(v), 0))


@dataclass
class NoisyLogistic:
    n_labels: int
    c: float = 1.0  # inverse L2 strength (sklearn's C)
    model: LogisticRegression | None = field(default=None, repr=False)

    @property
    def fitted(self) -> bool:
        return self.model is not None

    def fit(self, x: np.ndarray, answers: np.ndarray, llm_confusion: np.ndarray) -> NoisyLogistic:
        """``x`` [n, d] features of the answered rows, ``answers`` [n] the LLM's label indices."""
        a = np.asarray(answers, dtype=np.int64)
        if len(a) < MIN_ANSWERS or len(np.unique(a)) < 2:
            self.model = None
            return self
        L = self.n_labels
        conf = np.asarray(llm_confusion, dtype=np.float64)
        soft = conf[:, a].T  # P(y = c | a) with a flat prior: the first E-step
        soft /= np.maximum(soft.sum(axis=1, keepdims=True), 1e-12)
        xx = np.repeat(x, L, axis=0)
        yy = np.tile(np.arange(L), len(a))
        # Newton steps on a few dozen features, warm-started from the last fit (the previous batch's, and
        # then the previous EM step's): a refit on every batch costs a few milliseconds, not a fresh solve.
        model = self.model if self.model is not None and self.model.coef_.shape[1] == x.shape[1] \
            and len(self.model.classes_) == L else self._new_model()
        with warnings.catch_warnings():  # a step short of convergence is still a usable posterior
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in range(EM_MAX_STEPS):
                model.fit(xx, yy, sample_weight=soft.reshape(-1) + 1e-9)
                new = self._proba(model, x) * conf[:, a].T
                new /= np.maximum(new.sum(axis=1, keepdims=True), 1e-12)
                change, soft = float(np.abs(new - soft).max()), new
                if change < EM_TOL:
                    break
        self.model = model
        return self

    def state_dict(self) -> dict | None:
        """The fitted coefficients (a few dozen numbers), so a resumed run labels with the model it had."""
        if self.model is None:
            return None
        return {"classes": self.model.classes_.tolist(), "coef": self.model.coef_.tolist(),
                "intercept": self.model.intercept_.tolist()}

    def load_state_dict(self, state: dict | None) -> NoisyLogistic:
        if not state:
            self.model = None
            return self
        model = self._new_model()
        model.classes_ = np.asarray(state["classes"], dtype=np.int64)
        model.coef_ = np.asarray(state["coef"], dtype=np.float64)
        model.intercept_ = np.asarray(state["intercept"], dtype=np.float64)
        model.n_features_in_ = model.coef_.shape[1]
        self.model = model
        return self

    def _new_model(self) -> LogisticRegression:
        return LogisticRegression(C=self.c, max_iter=100, solver="newton-cholesky", warm_start=True)

    def _proba(self, model: LogisticRegression, x: np.ndarray) -> np.ndarray:
        """P(y | x) over all labels (a label the fit never saw as a class gets 0)."""
        out = np.zeros((len(x), self.n_labels))
        out[:, model.classes_] = model.predict_proba(x)
        return out

    def posterior(self, x: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise ValueError("the logistic posterior is not fitted")
        return self._proba(self.model, x)
