"""Real pretrained scorers that ship inside PyPI wheels, so the ensemble has voters with no hub access.

Sentiment scorers (VADER, TextBlob, AFINN) give one polarity score s per text. Their native
labels are ``positive / negative / neutral`` and the probabilities are a softmax over the logits

    z_pos = (s - t) / T,   z_neg = (-s - t) / T,   z_neu = 0

with t the scorer's usual neutral band and T a temperature on the score's scale (0.05 for the
[-1, 1] scores: 0 gives neutral 0.58, +-0.5 gives ~1.0). The argmax
is exactly each library's documented rule (s >= t positive, s <= -t negative, else neutral),
and the further s is from the band, the more confident the vote. The libraries are imported
in the constructors so that importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from autoannotator.slm.base import SLM
from autoannotator.slm.labels import build_mapping

SENTIMENT_LABELS = ["positive", "negative", "neutral"]  # positive first: argmax ties at s == t go positive
TOXICITY_LABELS = ["toxic", "non-toxic"]


def polarity_proba(scores: np.ndarray, threshold: float, temperature: float) -> np.ndarray:
    """(n, 3) probabilities over SENTIMENT_LABELS from polarity scores; see the module docstring."""
    s = np.asarray(scores, dtype=np.float64)
    z = np.stack([(s - threshold) / temperature, (-s - threshold) / temperature, np.zeros_like(s)], axis=1)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class _TextScorer(SLM):
    """Shared plumbing: clip long texts, skip blank ones (NaN row), score the rest in one call."""

    native: list[str] = []

    def __init__(self, name: str, task_labels: Sequence[str], mapping: Mapping[str, str | None] | None = None,
                 max_text_chars: int = 20_000):
        super().__init__(name, build_mapping(self.native, task_labels, mapping))
        self.max_text_chars = max_text_chars

    def _proba(self, texts: list[str]) -> np.ndarray:
        """(len(texts), n_native) for non-blank texts."""
        raise NotImplementedError

    def native_proba(self, texts: Sequence[str]) -> np.ndarray:
        out = np.full((len(texts), len(self.native)), np.nan, dtype=np.float32)
        clipped = [t[:self.max_text_chars] if isinstance(t, str) else "" for t in texts]
        keep = [i for i, t in enumerate(clipped) if t.strip()]
        if keep:
            out[keep] = self._proba([clipped[i] for i in keep])
        return out


class _PolarityScorer(_TextScorer):
    native = SENTIMENT_LABELS
    threshold: float
    temperature: float

    def _scores(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _proba(self, texts: list[str]) -> np.ndarray:
        return polarity_proba(self._scores(texts), self.threshold, self.temperature)


class VaderScorer(_PolarityScorer):
    """VADER compound score in [-1, 1]; the authors' cut-offs are +-0.05."""

    threshold, temperature = 0.05, 0.05

    def __init__(self, task_labels: Sequence[str], **kwargs):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        super().__init__("vader", task_labels, **kwargs)
        self._analyzer = SentimentIntensityAnalyzer()

    def _scores(self, texts: list[str]) -> np.ndarray:
        score = self._analyzer.polarity_scores
        return np.fromiter((score(t)["compound"] for t in texts), dtype=np.float64, count=len(texts))


class TextBlobScorer(_PolarityScorer):
    """Pattern-lexicon polarity in [-1, 1]; ``.sentiment`` needs no NLTK corpora (other TextBlob features do)."""

    threshold, temperature = 0.05, 0.05

    def __init__(self, task_labels: Sequence[str], **kwargs):
        from textblob import TextBlob

        super().__init__("textblob", task_labels, **kwargs)
        self._blob = TextBlob

    def _scores(self, texts: list[str]) -> np.ndarray:
        blob = self._blob
        return np.fromiter((blob(t).sentiment.polarity for t in texts), dtype=np.float64, count=len(texts))


class AfinnScorer(_PolarityScorer):
    """Sum of AFINN word valences (integers, unbounded): > 0 positive, < 0 negative, 0 neutral.

    The band t = 0.5 sits between 0 and the smallest non-zero sum, so the rule is unchanged;
    T = 2 because one mildly valenced word (+-1 .. +-2) should not look certain.
    """

    threshold, temperature = 0.5, 2.0

    def __init__(self, task_labels: Sequence[str], **kwargs):
        from afinn import Afinn

        super().__init__("afinn", task_labels, **kwargs)
        self._afinn = Afinn(emoticons=True)

    def _scores(self, texts: list[str]) -> np.ndarray:
        score = self._afinn.score
        return np.fromiter((score(t) for t in texts), dtype=np.float64, count=len(texts))


class ProfanityScorer(_TextScorer):
    """alt-profanity-check's linear SVM (calibrated) on TF-IDF: P(profane), vectorised over the batch.

    It detects profanity, the most common kind of toxicity; it will miss polite hostility.
    """

    native = TOXICITY_LABELS

    def __init__(self, task_labels: Sequence[str], **kwargs):
        import warnings

        with warnings.catch_warnings():  # its pickled model may predate the installed scikit-learn
            warnings.simplefilter("ignore")
            from profanity_check import predict_prob

        super().__init__("profanity", task_labels, **kwargs)
        self._predict_prob = predict_prob

    def _proba(self, texts: list[str]) -> np.ndarray:
        p = np.asarray(self._predict_prob(texts), dtype=np.float32)
        return np.stack([p, 1.0 - p], axis=1)
