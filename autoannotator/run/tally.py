"""The report's per-row figures gathered in one pass over the run store's rows, never all rows at once.

A report built from a list of every result record grew the run's peak memory with its rows (+65 % from 1k
to 100k rows, most of it that list); a :class:`RowTally` keeps counters only, so the end of a run costs the
same memory at any size. The report's functions over lists (``quality``, ``model_agreement``,
``per_batch``, ``confusion_by_source``) are this tally fed from the list, so there is one definition of
each figure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

from autoannotator.data import FINISH_CHUNK_ROWS

if TYPE_CHECKING:
    from autoannotator.data import DataSource
    from autoannotator.run.store import RunStore

NO_LABEL = "(no label)"


def _accuracy(n: int, correct: int) -> dict[str, Any]:
    """As ``metrics.accuracy_counts`` shows it: {n, correct, accuracy rounded to 4 digits}."""
    return {"n": n, "correct": correct, "accuracy": round(correct / n, 4) if n else None}


def _source_name(value: Any) -> str:
    """A label source as report.json writes it: an enum member (in-memory records) by its value."""
    return value.value if isinstance(value, Enum) else str(value)


class RowTally:
    """Counters over result records (and their gold labels, when the run has them), fed with :meth:`add`."""

    def __init__(self, labels: Sequence[str], model_names: Sequence[str] = (), with_gold: bool = False):
        self.labels = list(labels)
        self.model_names = list(model_names)
        self.with_gold = with_gold
        self._known = {name: i for i, name in enumerate(self.labels)}
        self.n = 0
        self.sources: Counter[str] = Counter()
        self.label_counts: Counter[str] = Counter()
        self._labelled = 0
        self._voted: Counter[str] = Counter()
        self._agree: Counter[str] = Counter()
        self._batch_rows: Counter[int] = Counter()
        self._batch_calls: Counter[int] = Counter()
        self._batch_sources: dict[int, Counter[str]] = {}
        self._scored = 0
        self._correct = 0
        self._by_source: dict[str, list[int]] = {}  # label source -> [n, correct]
        self.gold_unknown: Counter[Any] = Counter()
        self._confusion: dict[str, list[list[int]]] = {}

    def add(self, rec: dict[str, Any], gold: str | None = None) -> None:
        """One result record; ``gold`` is its row's gold label (ignored without ``with_gold``)."""
        self.n += 1
        source = _source_name(rec.get("label_source"))
        self.sources[source] += 1
        label = rec.get("label")
        if label is not None:
            self.label_counts[label] += 1
            self._add_agreement(rec, label)
        self._add_batch(rec, source)
        if self.with_gold:
            self._add_scored(source, label, gold)

    def add_all(self, results: Iterable[dict[str, Any]], gold: Sequence[str | None] | None = None) -> RowTally:
        """Every record of ``results``, with ``gold`` indexed by row id, and every gold label (when given)."""
        for rec in results:
            self.add(rec, gold[rec["row_id"]] if gold is not None else None)
        for g in gold if gold is not None else ():
            self.add_gold(g)
        return self

    def _add_agreement(self, rec: dict[str, Any], label: str) -> None:
        self._labelled += 1
        votes = rec.get("votes") or {}
        for name in self.model_names:
            vote = (votes.get(name) or {}).get("label")
            if vote is not None:
                self._voted[name] += 1
                self._agree[name] += vote == label

    def _add_batch(self, rec: dict[str, Any], source: str) -> None:
        b = int(rec.get("batch") or 0)
        self._batch_rows[b] += 1
        self._batch_sources.setdefault(b, Counter())[source] += 1
        # A record without llm_label (stored before it existed) counts a verified source as an answer.
        answered = rec.get("llm_label") is not None if "llm_label" in rec else source == "llm_verified"
        self._batch_calls[b] += int(answered)

    def add_gold(self, gold: str | None) -> None:
        """One row's gold label, for the count of those outside the label set (once per input row)."""
        if gold not in self._known:
            self.gold_unknown[gold] += 1

    def _add_scored(self, source: str, label: str | None, gold: str | None) -> None:
        if gold not in self._known:
            return
        hit = int(label == gold)
        self._scored += 1
        self._correct += hit
        counts = self._by_source.setdefault(source, [0, 0])
        counts[0] += 1
        counts[1] += hit
        matrix = self._confusion.setdefault(source, [[0] * (len(self.labels) + 1) for _ in self.labels])
        matrix[self._known[gold]][self._known.get(label, len(self.labels))] += 1

    # ---------- the report's fields ----------

    def model_agreement(self) -> dict[str, dict[str, Any]]:
        """Per model: how often it voted on a labelled row, and how often its vote was the final label."""
        return {name: {"coverage": round(self._voted[name] / self._labelled, 4) if self._labelled else None,
                       "agreement": round(self._agree[name] / self._voted[name], 4) if self._voted[name] else None}
                for name in self.model_names}

    def per_batch(self) -> list[dict[str, Any]]:
        return [{"batch": b, "rows": self._batch_rows[b], "llm_calls": self._batch_calls[b],
                 "by_source": dict(sorted(self._batch_sources[b].items()))} for b in sorted(self._batch_rows)]

    def quality(self) -> dict[str, Any]:
        return {
            "accuracy": _accuracy(self._scored, self._correct)["accuracy"],
            "n_scored": self._scored,
            "by_label_source": {src: _accuracy(*c) for src, c in sorted(self._by_source.items())},
            "gold_unknown_rows": sum(self.gold_unknown.values()),
            "gold_unknown_values": dict(self.gold_unknown.most_common(10)),
        }

    def confusion_by_source(self) -> dict[str, dict[str, Any]]:
        """Per label source: ``{labels, columns, matrix}``; the ``(no label)`` column only when used."""
        out = {}
        for src, matrix in sorted(self._confusion.items()):
            columns = self.labels + [NO_LABEL]
            if not any(row[-1] for row in matrix):
                columns, matrix = columns[:-1], [row[:-1] for row in matrix]
            out[src] = {"labels": list(self.labels), "columns": columns, "matrix": [list(r) for r in matrix]}
        return out


def tally_run(store: RunStore, source: DataSource, with_gold: bool, labels: Sequence[str],
              model_names: Sequence[str]) -> RowTally:
    """The report's per-row figures in one pass over the store, ``FINISH_CHUNK_ROWS`` rows at a time (with the
    input's gold labels, read alongside by chunk), so neither the end of a run nor a review import holds a
    list of every row."""
    tally = RowTally(labels, model_names, with_gold=with_gold)
    if not with_gold:
        for part in store.iter_results():
            for rec in part:
                tally.add(rec)
        return tally
    for chunk in source.iter_chunks(0, FINISH_CHUNK_ROWS):
        part = store.results_between(chunk.row_ids[0], chunk.row_ids[-1] + 1)
        if [r["row_id"] for r in part] != chunk.row_ids:
            raise RuntimeError(f"run store does not line up with the input at row {chunk.row_ids[0]}")
        for rec, g in zip(part, chunk.gold or [None] * len(part)):
            tally.add(rec, g)
            tally.add_gold(g)
    return tally
