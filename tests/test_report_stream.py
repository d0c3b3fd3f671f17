"""The end-of-run report streams over the run store: the same figures as from a list of every row, in memory
that does not grow with the rows."""

from __future__ import annotations

import csv
import tracemalloc
from pathlib import Path

from autoannotator.data import open_source
from autoannotator.run.report import model_agreement, quality
from autoannotator.run.report_html import confusion_by_source, per_batch
from autoannotator.run.store import RunStore
from autoannotator.run.tally import tally_run as _tally

LABELS = ["positive", "negative", "neutral"]
MODELS = ["m1", "m2"]
SOURCES = ["slm_consensus", "llm_verified", "llm_overruled", "llm_failed", "skipped_empty"]


def _record(rid: int) -> dict:
    src = SOURCES[(rid * 7) % len(SOURCES)]
    label = None if src == "skipped_empty" or rid % 13 == 0 else LABELS[rid % 3]
    votes = {"m1": {"label": LABELS[(rid // 2) % 3]}, "m2": {"label": None if rid % 4 == 0 else LABELS[rid % 3]}}
    return {"row_id": rid, "label": label, "label_source": src, "uncertainty": 0.5, "votes": votes,
            "majority": label, "llm_label": label if src.startswith("llm_v") else None, "batch": rid // 64,
            "confidence": 0.9, "audit": False}


def _gold(rid: int) -> str:
    return "spam" if rid % 17 == 0 else ("" if rid % 19 == 0 else LABELS[(rid + (rid % 5 == 0)) % 3])


def _make(tmp_path: Path, n: int) -> tuple[RunStore, object]:
    store = RunStore(tmp_path / f"run-{n}.sqlite")
    for lo in range(0, n, 5000):
        store.put_results([_record(r) for r in range(lo, min(n, lo + 5000))])
    data = tmp_path / f"data-{n}.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "gold"])
        w.writerows([f"text {r}", _gold(r)] for r in range(n))
    return store, open_source(data, "text", "gold")


def test_streamed_tally_equals_the_list_functions(tmp_path: Path) -> None:
    n = 23_457  # more than two of the tally's 10,000-row chunks, the last one partial
    store, source = _make(tmp_path, n)
    results = store.results()
    gold = [g for chunk in source.iter_chunks() for g in chunk.gold]
    tally = _tally(store, source, True, LABELS, MODELS)
    assert tally.n == n
    assert tally.quality() == quality(results, gold, LABELS)
    assert tally.model_agreement() == model_agreement(results, MODELS)
    assert tally.per_batch() == per_batch(results)
    assert tally.confusion_by_source() == confusion_by_source(results, gold, LABELS)
    q = tally.quality()
    assert q["gold_unknown_rows"] == sum(1 for g in gold if g not in LABELS) > 0
    assert q["n_scored"] == sum(1 for g in gold if g in LABELS)
    # Hand count for one figure, so the equality above is not two copies of one mistake.
    labelled = [r for r in results if r["label"] is not None]
    voted = [r for r in labelled if r["votes"]["m2"]["label"] is not None]
    assert tally.model_agreement()["m2"]["coverage"] == round(len(voted) / len(labelled), 4)
    no_gold = _tally(store, source, False, LABELS, MODELS)
    assert no_gold.per_batch() == tally.per_batch() and not no_gold.with_gold
    assert dict(no_gold.sources) == {s: sum(1 for r in results if r["label_source"] == s) for s in SOURCES}


def _peak_of_tally(tmp_path: Path, n: int) -> int:
    store, source = _make(tmp_path, n)
    tracemalloc.start()
    try:
        _tally(store, source, True, LABELS, MODELS)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        store.close()


def test_tally_memory_does_not_grow_with_rows(tmp_path: Path) -> None:
    # Both sizes hold two whole 10,000-row chunks (the one tallied and the next being read), so a list of
    # every record would take 2.5x at the larger size; chunk by chunk takes about the same.
    small, large = _peak_of_tally(tmp_path, 20_000), _peak_of_tally(tmp_path, 50_000)
    assert large < 1.3 * small, (small, large)


def test_store_covers_and_iter_results(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s.sqlite")
    assert store.covers(0) and not store.covers(1)
    store.put_results([_record(r) for r in (0, 1, 3)])
    assert not store.covers(3) and not store.covers(4)
    store.put_results([_record(2)])
    assert store.covers(4)
    assert [[r["row_id"] for r in part] for part in store.iter_results(chunk_rows=3)] == [[0, 1, 2], [3]]
    assert [r["row_id"] for r in store.results_with_source(SOURCES[0])] == [0]
    assert store.decisions_between(1, 3) == {1: (LABELS[1], "llm_overruled", 0.9), 2: (None, "skipped_empty", 0.9)}
