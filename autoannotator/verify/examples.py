"""Few-shot examples for the verifier (``--few-shot N``): per hard row, the N labelled rows nearest
to it by sentence embedding, balanced across labels.

Why these rows, and why this way:
- **Rows labelled in earlier batches only**, read from the run store as of the start of the batch
  (the state its checkpoint describes): a resumed batch then sees the same candidates and builds
  byte-identical prompts, so every answer it already paid for is a cache hit.
- **Labels worth imitating**: rows the verifier answered (``llm_verified``), rows a person set, and
  rows the SLMs settled with a posterior confidence of at least ``min_confidence``. A row whose
  recorded LLM answer differs from its label (overruled, or an audit that disagreed) is left out:
  one of the two is wrong, and an example must not teach either.
- **Balanced**: ``N // L`` per label, the rest to the labels whose nearest row is nearest; a label
  with too few candidates leaves its places to the nearest rows of the others. Nearest-only would
  often show N rows of the majority label, and a small LLM copies the labels it is shown.
- **Deterministic**: cosine similarity rounded to 6 decimals, ties by row id; the vectors are stored
  in the run directory (``run/embeddings.py``), never recomputed for a row; the hard row itself is
  never its own example. Shown least similar first, so the nearest sits next to the text to label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from autoannotator.run.embeddings import EmbeddingStore
from autoannotator.run.store import RunStore
from autoannotator.task import LabelSource
from autoannotator.verify.base import Example
from autoannotator.verify.prompt import example_excerpt

# At most this many candidates per label, the most recently labelled: bounds memory and the work per
# batch on a large file while keeping the pool as of the batch's start a pure function of the store.
POOL_PER_LABEL = 4096
_TRUSTED = {LabelSource.LLM_VERIFIED.value, LabelSource.HUMAN_REVIEWED.value}


def choose_examples(query: np.ndarray, pool: np.ndarray, pool_labels: Sequence[str], pool_ids: Sequence[int],
                    labels: Sequence[str], n: int, exclude: int | None = None) -> list[int]:
    """Positions in ``pool`` of the ``n`` examples for one query vector, in prompt order (least similar
    first). Balanced across ``labels``, nearest by cosine (unit vectors: a dot product), ``exclude``
    (the query's own row id) never chosen."""
    ids = np.asarray(pool_ids, dtype=np.int64)
    if n <= 0 or len(ids) == 0:
        return []
    sims = np.round(np.asarray(pool, dtype=np.float32) @ np.asarray(query, dtype=np.float32), 6)
    usable = ids != (exclude if exclude is not None else np.iinfo(np.int64).min)
    ranked = [int(i) for i in np.lexsort((ids, -sims)) if usable[i]]  # nearest first, ties by row id
    by_label: dict[str, list[int]] = {name: [] for name in labels}
    for i in ranked:
        if pool_labels[i] in by_label:
            by_label[pool_labels[i]].append(i)
    present = [name for name in labels if by_label[name]]
    if not present:
        return []
    # Extra places go to the labels whose nearest candidate is nearest (then in label order).
    order = sorted(present, key=lambda name: (-sims[by_label[name][0]], labels.index(name)))
    quota = {name: n // len(labels) + (1 if k < n % len(labels) else 0) for k, name in enumerate(order)}
    chosen = [i for name in present for i in by_label[name][:quota[name]]]
    if len(chosen) < n:  # a label with too few candidates: its places go to the nearest of the rest
        taken = set(chosen)
        chosen += [i for i in ranked if i not in taken and pool_labels[i] in by_label][:n - len(chosen)]
    return sorted(chosen, key=lambda i: (sims[i], -ids[i]))  # the nearest last, beside the text


def is_candidate(record: dict, min_confidence: float) -> bool:
    """Can this stored row be shown as an example? (See the module's docstring.)"""
    label, source = record.get("label"), str(record.get("label_source"))
    if label is None:
        return False
    llm = record.get("llm_label")
    if llm is not None and llm != label:
        return False
    if source in _TRUSTED:
        return True
    conf = record.get("confidence")
    return source == LabelSource.SLM_CONSENSUS.value and conf is not None and conf >= min_confidence


@dataclass
class FewShotPicker:
    """The examples of each hard row of a batch, from the rows earlier batches labelled.

    Candidates are read incrementally (batches not read yet), so a batch costs the embedding of its
    new candidates and hard rows; a fresh process (a resume) reads the earlier batches once and
    reaches the same pool.
    """

    n: int
    store: RunStore
    embeddings: EmbeddingStore
    encode: Callable[[list[str]], np.ndarray]
    labels: Sequence[str]
    min_confidence: float = 0.9
    _read_upto: int = 0  # batches [0, _read_upto) are in the pool
    # label -> (row id, the excerpt an example shows, its vector), in labelling order
    _pool: dict[str, list[tuple[int, str, np.ndarray]]] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)  # rows whose texts are about to be read (see wanted())

    def wanted(self) -> list[int]:
        """Rows whose texts the picker is about to read: a chunked reader fetches them in one pass."""
        return list(self.pending)

    def pick(self, row_ids: Sequence[int], batch_index: int, text_of: Callable[[int], str]
             ) -> dict[int, list[Example]]:
        """Row id -> its examples (empty where nothing is labelled yet) for ``row_ids`` of batch ``batch_index``."""
        if self.n <= 0 or not row_ids:
            return {}
        self._advance(batch_index, text_of)
        ids, labels, excerpts, vectors = self._matrix()
        if not len(ids):
            return {int(r): [] for r in row_ids}
        queries = self.embeddings.get(row_ids, text_of, self.encode)
        out: dict[int, list[Example]] = {}
        for rid, q in zip(row_ids, queries):
            picked = choose_examples(q, vectors, labels, ids, self.labels, self.n, exclude=int(rid))
            out[int(rid)] = [Example(int(ids[i]), excerpts[i], labels[i]) for i in picked]
        return out

    def _advance(self, batch_index: int, text_of: Callable[[int], str]) -> None:
        if batch_index < self._read_upto:  # another run's batch numbering (should not happen): start over
            self._read_upto, self._pool = 0, {}
        if batch_index == self._read_upto:
            return
        new = [r for r in self.store.results_in_batches(self._read_upto, batch_index)
               if is_candidate(r, self.min_confidence) and r["label"] in self.labels]
        new.sort(key=lambda r: (r["batch"], r["row_id"]))  # labelling order: the cap keeps the latest
        if new:
            self.pending = [r["row_id"] for r in new]
            try:
                texts = {rid: text_of(rid) for rid in self.pending}
                vectors = self.embeddings.get(self.pending, texts.__getitem__, self.encode)
            finally:
                self.pending = []
            for rec, vec in zip(new, vectors):
                rid = int(rec["row_id"])
                self._pool.setdefault(rec["label"], []).append((rid, example_excerpt(texts[rid]), vec))
            for name, rows in self._pool.items():
                if len(rows) > POOL_PER_LABEL:
                    del rows[:len(rows) - POOL_PER_LABEL]
        self._read_upto = batch_index

    def _matrix(self) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
        rows = [(rid, name, text, vec) for name in self.labels for rid, text, vec in self._pool.get(name, [])]
        if not rows:
            return np.zeros(0, dtype=np.int64), [], [], np.zeros((0, self.embeddings.dim), dtype=np.float32)
        return (np.asarray([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows], [r[2] for r in rows],
                np.stack([r[3] for r in rows]))
