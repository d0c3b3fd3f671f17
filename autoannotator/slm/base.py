"""The SLM interface and the explicit mapping from a model's own labels to the task's labels.

Every SLM produces probabilities over its *native* labels (a Hugging Face model's
``id2label``, a scorer's positive/neutral/negative bins). A ``LabelMapping`` sends each
native label to one task label or to nothing. A model whose top native label maps to
nothing abstains on that sample: it has no opinion the task can use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, model_validator


class LabelMapping(BaseModel):
    """native label -> task label, or None where the model cannot express any task label."""

    native_labels: list[str]
    task_labels: list[str]
    mapping: dict[str, str | None]

    @model_validator(mode="after")
    def _check(self) -> "LabelMapping":
        unknown_native = set(self.mapping) - set(self.native_labels)
        if unknown_native:
            raise ValueError(f"mapping names labels the model does not have: {sorted(unknown_native)}")
        bad = {v for v in self.mapping.values() if v is not None and v not in self.task_labels}
        if bad:
            raise ValueError(f"mapping targets labels outside the task: {sorted(bad)}")
        return self

    @classmethod
    def by_name(cls, native_labels: Sequence[str], task_labels: Sequence[str],
                synonyms: dict[str, str] | None = None) -> "LabelMapping":
        """Map native labels onto task labels with the same name (case-insensitive) or a known synonym."""
        lower_task = {t.lower(): t for t in task_labels}
        syn = {k.lower(): v.lower() for k, v in (synonyms or {}).items()}
        mapping: dict[str, str | None] = {}
        for native in native_labels:
            key = native.lower()
            target = lower_task.get(key) or lower_task.get(syn.get(key, ""))
            mapping[native] = target
        return cls(native_labels=list(native_labels), task_labels=list(task_labels), mapping=mapping)

    @property
    def covered_task_labels(self) -> list[str]:
        hit = {v for v in self.mapping.values() if v is not None}
        return [t for t in self.task_labels if t in hit]

    def matrix(self) -> np.ndarray:
        """(n_native, n_task) 0/1 matrix; native probabilities @ matrix = task probability mass."""
        m = np.zeros((len(self.native_labels), len(self.task_labels)), dtype=np.float32)
        col = {t: j for j, t in enumerate(self.task_labels)}
        for i, native in enumerate(self.native_labels):
            target = self.mapping.get(native)
            if target is not None:
                m[i, col[target]] = 1.0
        return m


@dataclass
class Prediction:
    """One model's output on a batch, in task-label space.

    ``votes[i]`` is a task-label index, or -1 when the model abstains on sample i.
    ``proba[i]`` is the probability mass the model puts on each task label (rows may sum
    to < 1 when some native mass maps to nothing).
    """

    votes: np.ndarray  # int64, shape (n,)
    proba: np.ndarray  # float32, shape (n, n_task_labels)

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the voted label (0 where the model abstained)."""
        idx = np.clip(self.votes, 0, None)
        conf = self.proba[np.arange(len(self.votes)), idx]
        return np.where(self.votes >= 0, conf, 0.0)


class SLM(ABC):
    """A small classifier. Subclasses implement ``native_proba``; mapping and voting are shared."""

    name: str
    trainable: bool = False

    def __init__(self, name: str, mapping: LabelMapping):
        self.name = name
        self.mapping = mapping
        self._matrix = mapping.matrix()

    @property
    def native_labels(self) -> list[str]:
        return self.mapping.native_labels

    @abstractmethod
    def native_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, n_native) probabilities; a row of NaN means the model has no opinion on that text."""

    def predict(self, texts: Sequence[str]) -> Prediction:
        native = np.asarray(self.native_proba(texts), dtype=np.float32)
        n_task = self._matrix.shape[1]
        if len(texts) == 0:
            return Prediction(np.zeros(0, dtype=np.int64), np.zeros((0, n_task), dtype=np.float32))
        no_opinion = np.isnan(native).any(axis=1)
        native = np.nan_to_num(native, nan=0.0)
        proba = native @ self._matrix
        top_native = native.argmax(axis=1)
        top_maps = self._matrix[top_native].sum(axis=1) > 0
        votes = np.where(top_maps & ~no_opinion, self._matrix[top_native].argmax(axis=1), -1)
        return Prediction(votes.astype(np.int64), proba.astype(np.float32))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": type(self).__name__,
            "trainable": self.trainable,
            "native_labels": self.native_labels,
            "mapping": self.mapping.mapping,
        }


class TrainableSLM(SLM):
    """An SLM that continual fine-tuning can improve. Its native labels are the task labels."""

    trainable = True
    # Set by the fine-tuning guard: a model no better than always answering the held-out slice's most
    # common label has no opinion to add, so it keeps abstaining (while it trains on) until it beats that.
    qualified: bool = True

    def predict(self, texts: Sequence[str]) -> Prediction:
        pred = self.predict_ungated(texts)
        if not self.qualified:
            pred.votes[:] = -1
        return pred

    def predict_ungated(self, texts: Sequence[str]) -> Prediction:
        """What the weights say, whether or not the model has qualified to vote (the guard's view)."""
        return SLM.predict(self, texts)

    @property
    @abstractmethod
    def is_trained(self) -> bool:
        """False until the first fine-tuning round: an untrained head's votes would be noise, so it abstains."""

    @abstractmethod
    def train_on(self, texts: Sequence[str], labels: np.ndarray, cfg, *, sample_weight: np.ndarray | None = None,
                 epochs: int | None = None) -> dict:
        """Continue training in place from the current weights on task-label indices; return training metrics.

        ``sample_weight`` scales each row's loss (None: all 1); ``epochs`` overrides ``cfg.epochs``
        (an incremental round makes fewer passes than a full retrain).
        """

    @abstractmethod
    def clone(self) -> "TrainableSLM":
        """An independent copy (weights included), so a round can be rejected without touching the original."""

    @abstractmethod
    def save(self, path) -> None: ...

    @abstractmethod
    def load(self, path) -> None: ...
