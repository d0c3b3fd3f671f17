"""A second trainable student of another kind: TF-IDF word and character n-grams, linear classifier.

Why a second one: the MiniLM student and the lexicon scorers fail on different rows for
different reasons; a bag-of-n-grams model errs differently again (it learns the data set's own
vocabulary, misspellings and domain words, and no pretrained notion of sentiment), so when it
disagrees with the MiniLM student the disagreement carries information. It trains in well
under a second per round on a CPU.

How it stays incremental, like the MiniLM student (a round continues from the current weights):
  - features are *hashed* (scikit-learn's ``HashingVectorizer``: word 1-2-grams and character
    2-5-grams inside word boundaries, 2**18 buckets each), so there is no vocabulary to refit;
  - the IDF comes from document frequencies counted over every distinct text trained on so far
    (a text replayed in a later round is not counted twice), with sublinear TF and L2 norm;
  - the classifier is ``SGDClassifier(loss="log_loss")`` advanced with ``partial_fit``, which
    honours sample weights and continues from ``coef_``.
Weights are saved as arrays in a compressed ``.npz`` (no pickle): coefficients, intercepts, the
SGD step counter, document frequencies and the hashes of the texts counted.

Until its first round it abstains, like any untrained student.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from autoannotator.slm.base import LabelMapping, TrainableSLM
from autoannotator.slm.torch_infer import clip_texts

STATE_FILE = "tfidf.json"
WEIGHTS_FILE = "tfidf.npz"
N_FEATURES = 2 ** 18  # per vectorizer: collisions are rare at this size for a few thousand texts


def _text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "big")


class TfidfStudent(TrainableSLM):
    def __init__(self, task_labels: Sequence[str], *, name: str = "tfidf", seed: int = 0, alpha: float = 1e-4,
                 passes_per_epoch: int = 5, max_text_chars: int = 20_000):
        from sklearn.feature_extraction.text import HashingVectorizer

        labels = list(task_labels)
        super().__init__(name, LabelMapping(native_labels=labels, task_labels=labels,
                                            mapping={t: t for t in labels}))
        self.seed, self.alpha, self.passes_per_epoch = seed, alpha, passes_per_epoch
        self.max_text_chars = max_text_chars
        common = dict(n_features=N_FEATURES, alternate_sign=False, norm=None, lowercase=True, dtype=np.float32)
        self._vectorizers = [HashingVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b",
                                               **common),
                             HashingVectorizer(analyzer="char_wb", ngram_range=(2, 5), **common)]
        self.rounds = 0
        self.n_docs = 0
        self.df = np.zeros(len(self._vectorizers) * N_FEATURES, dtype=np.int32)
        self._seen: set[int] = set()
        self.clf = self._new_classifier()

    def _new_classifier(self):
        from sklearn.linear_model import SGDClassifier

        return SGDClassifier(loss="log_loss", alpha=self.alpha, learning_rate="optimal", average=False,
                             shuffle=True, random_state=self.seed)

    @property
    def is_trained(self) -> bool:
        return self.rounds > 0

    # --- features -----------------------------------------------------------------------------

    def _counts(self, texts: Sequence[str]) -> sp.csr_matrix:
        clipped = clip_texts(texts, self.max_text_chars)
        return sp.hstack([v.transform(clipped) for v in self._vectorizers], format="csr")

    def _count_documents(self, texts: Sequence[str], counts: sp.csr_matrix) -> None:
        """Add each text not counted before to the document frequencies."""
        fresh = []
        for i, t in enumerate(texts):
            h = _text_hash(t)
            if h not in self._seen:
                self._seen.add(h)
                fresh.append(i)
        if fresh:
            present = counts[fresh]
            present.data[:] = 1
            self.df += np.asarray(present.sum(axis=0), dtype=np.int32).ravel()
            self.n_docs += len(fresh)

    def _features(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        """Sublinear TF x smooth IDF, each row scaled to unit length (per vectorizer half, then jointly)."""
        x = counts.astype(np.float64, copy=True)
        np.log1p(x.data, out=x.data)
        idf = np.log((1.0 + self.n_docs) / (1.0 + self.df)) + 1.0
        x = x @ sp.diags(idf)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms) @ x)

    # --- the SLM interface --------------------------------------------------------------------

    def native_proba(self, texts: Sequence[str]) -> np.ndarray:
        out = np.full((len(texts), len(self.native_labels)), np.nan, dtype=np.float32)
        if not self.is_trained or len(texts) == 0:
            return out
        live = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        if live:
            x = self._features(self._counts([texts[i] for i in live]))
            out[live] = self._proba(x)
        return out

    def _proba(self, x: sp.csr_matrix) -> np.ndarray:
        """Probabilities over all task labels, in task order (SGD knows every label from its first call)."""
        return self.clf.predict_proba(x).astype(np.float32)

    def train_on(self, texts: Sequence[str], labels: np.ndarray, cfg, *, sample_weight: np.ndarray | None = None,
                 epochs: int | None = None) -> dict:
        """``passes_per_epoch x epochs`` SGD passes from the current coefficients, each row's loss scaled by its weight."""
        y = np.asarray(labels, dtype=np.int64)
        n = len(y)
        if len(texts) != n:
            raise ValueError(f"{len(texts)} texts but {n} labels")
        if y.size and (y.min() < 0 or y.max() >= len(self.native_labels)):
            raise ValueError("labels must be task-label indices")
        w = np.ones(n, dtype=np.float64) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("sample weights must be one finite, non-negative number per row")
        epochs = cfg.epochs if epochs is None else epochs
        started = time.perf_counter()
        if n == 0 or epochs <= 0 or w.sum() <= 0:
            return {"n": n, "epochs": 0, "steps": 0, "final_loss": float("nan"), "seconds": 0.0}
        counts = self._counts(texts)
        self._count_documents(texts, counts)
        x = self._features(counts)
        w = w / w.mean()
        classes = np.arange(len(self.native_labels))
        passes = epochs * self.passes_per_epoch
        self.clf.random_state = self.seed + 1000 * self.rounds
        for _ in range(passes):
            self.clf.partial_fit(x, y, classes=classes, sample_weight=w)
        proba = np.clip(self._proba(x)[np.arange(n), y], 1e-7, 1.0)
        self.rounds += 1
        seconds = time.perf_counter() - started
        return {"n": n, "epochs": epochs, "steps": passes, "final_loss": round(float(-(w * np.log(proba)).mean()), 4),
                "seconds": round(seconds, 3), "samples_per_s": round(n * epochs / max(seconds, 1e-9), 1),
                "weight_mean": round(float(np.mean(sample_weight)) if sample_weight is not None else 1.0, 4)}

    def describe(self) -> dict:
        return {**super().describe(), "is_trained": self.is_trained, "rounds": self.rounds, "n_docs": self.n_docs}

    def clone(self) -> "TfidfStudent":
        twin = copy.copy(self)  # the vectorizers are stateless, so sharing them is safe
        twin.clf = copy.deepcopy(self.clf)
        twin.df = self.df.copy()
        twin._seen = set(self._seen)
        return twin

    def save(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {"df": self.df, "seen": np.fromiter(self._seen, dtype=np.uint64, count=len(self._seen))}
        if self.is_trained:
            arrays.update(coef=self.clf.coef_.astype(np.float32), intercept=self.clf.intercept_.astype(np.float32),
                          t=np.array([self.clf.t_]))
        np.savez_compressed(path / WEIGHTS_FILE, **arrays)
        state = {"rounds": self.rounds, "n_docs": self.n_docs, "task_labels": self.native_labels, "seed": self.seed,
                 "alpha": self.alpha, "n_features": N_FEATURES}
        (path / STATE_FILE).write_text(json.dumps(state, indent=2))

    def load(self, path) -> None:
        path = Path(path)
        state = json.loads((path / STATE_FILE).read_text())
        if state["task_labels"] != self.native_labels:
            raise ValueError(f"saved tfidf labels {state['task_labels']} differ from {self.native_labels}")
        if state.get("n_features") != N_FEATURES:
            raise ValueError(f"{path} was saved with {state.get('n_features')} hashed features, not {N_FEATURES}")
        with np.load(path / WEIGHTS_FILE, allow_pickle=False) as arrays:
            self.df = arrays["df"].astype(np.int32)
            self._seen = {int(h) for h in arrays["seen"]}
            self.clf = self._new_classifier()
            if "coef" in arrays:  # restore what partial_fit reads: it then continues from these weights
                self.clf.classes_ = np.arange(len(self.native_labels))
                self.clf.coef_ = arrays["coef"].astype(np.float64)
                self.clf.intercept_ = arrays["intercept"].astype(np.float64)
                self.clf.t_ = float(arrays["t"][0])
                self.clf.n_features_in_ = self.clf.coef_.shape[1]
        self.rounds, self.n_docs = int(state["rounds"]), int(state["n_docs"])
        self.seed, self.alpha = int(state.get("seed", self.seed)), float(state.get("alpha", self.alpha))
