"""The run directory's database: one row per labelled sample, the hard-sample pool and fine-tuning rounds.

Writes are upserts keyed by row id, so a graph node that re-runs after a crash rewrites the
same rows instead of adding new ones: every input row ends up in ``results`` exactly once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import closing
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from autoannotator.data import FINISH_CHUNK_ROWS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    row_id INTEGER PRIMARY KEY,
    label TEXT,
    label_source TEXT NOT NULL,
    uncertainty REAL,
    votes TEXT NOT NULL,
    majority TEXT,
    llm_label TEXT,
    batch INTEGER NOT NULL,
    confidence REAL,
    audit INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pool (
    row_id INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    batch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS finetune_rounds (
    round INTEGER NOT NULL,
    model TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (round, model)
);
"""


class RunStore:
    @staticmethod
    def read_stats(path: Path) -> dict[str, Any]:
        """Rows done, per label source, and the pool's size, without creating anything: a missing
        file (a run that has not started labelling) reads as empty."""
        empty: dict[str, Any] = {"results": 0, "label_sources": {}, "pool": 0}
        if not Path(path).is_file():
            return empty
        try:
            with closing(sqlite3.connect(path, timeout=30)) as db:
                sources = dict(db.execute("SELECT label_source, COUNT(*) FROM results GROUP BY 1").fetchall())
                pool = db.execute("SELECT COUNT(*) FROM pool").fetchone()[0]
        except sqlite3.OperationalError:  # created but no tables yet
            return empty
        return {"results": sum(sources.values()), "label_sources": sources, "pool": pool}

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A store written before the decision layer lacks confidence/audit: add them (NULL / 0)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(results)")}
        for name, decl in (("confidence", "REAL"), ("audit", "INTEGER NOT NULL DEFAULT 0")):
            if name not in have:
                self._db.execute(f"ALTER TABLE results ADD COLUMN {name} {decl}")

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(sql, list(rows))
            self._db.execute("COMMIT")

    def put_results(self, records: list[dict[str, Any]]) -> None:
        self._write(
            f"INSERT OR REPLACE INTO results ({', '.join(self._RESULT_KEYS)}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            ((r["row_id"], r["label"], str(r["label_source"]), r["uncertainty"], json.dumps(r["votes"]),
              r.get("majority"), r.get("llm_label"), r["batch"], r.get("confidence"), int(bool(r.get("audit"))))
             for r in records),
        )

    def add_to_pool(self, items: list[tuple[int, str]], batch: int) -> int:
        self._write("INSERT OR REPLACE INTO pool VALUES (?,?,?)", ((rid, lbl, batch) for rid, lbl in items))
        return self.pool_size()

    def pool_size(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM pool").fetchone()[0]

    def pool(self) -> list[tuple[int, str]]:
        return [tuple(r) for r in self._db.execute("SELECT row_id, label FROM pool ORDER BY row_id")]

    def put_finetune_record(self, round_: int, model: str, record: dict) -> None:
        self._write("INSERT OR REPLACE INTO finetune_rounds VALUES (?,?,?)", [(round_, model, json.dumps(record))])

    def finetune_records(self) -> list[dict]:
        rows = self._db.execute("SELECT record FROM finetune_rounds ORDER BY round, model")
        return [json.loads(r[0]) for r in rows]

    _RESULT_KEYS = ("row_id", "label", "label_source", "uncertainty", "votes", "majority", "llm_label", "batch",
                    "confidence", "audit")

    def update_decisions(self, decisions: list[tuple[int, str | None, str, float]]) -> None:
        """Rewrite (row id, label, label source, confidence) of stored rows: the final relabelling
        under the calibrated rule, once the last batch has taught the model what it knows."""
        self._write("UPDATE results SET label = ?, label_source = ?, confidence = ? WHERE row_id = ?",
                    ((lbl, src, conf, rid) for rid, lbl, src, conf in decisions))

    def update_votes(self, votes: list[tuple[int, dict[str, dict]]]) -> None:
        """Rewrite (row id, model -> {"label", "p"}) of stored rows: the final models' votes on rows settled
        before their weights came in (the graph's revote step)."""
        self._write("UPDATE results SET votes = ? WHERE row_id = ?", ((json.dumps(v), rid) for rid, v in votes))

    def set_llm_labels(self, answers: list[tuple[int, str]]) -> None:
        """Record (row id, LLM label) on stored rows: the answers the finishing top-up asked for settled rows."""
        self._write("UPDATE results SET llm_label = ? WHERE row_id = ?", ((lbl, rid) for rid, lbl in answers))

    def _select_results(self, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
        cur = self._db.execute(f"SELECT {', '.join(self._RESULT_KEYS)} FROM results {where} ORDER BY row_id", params)
        out = []
        for row in cur:
            rec = dict(zip(self._RESULT_KEYS, row))
            rec["votes"] = json.loads(rec["votes"])
            out.append(rec)
        return out

    def results(self) -> list[dict[str, Any]]:
        return self._select_results()

    def results_between(self, lo: int, hi: int) -> list[dict[str, Any]]:
        """Rows lo <= row_id < hi, by row id."""
        return self._select_results("WHERE row_id >= ? AND row_id < ?", (lo, hi))

    def results_of(self, row_ids: Sequence[int]) -> list[dict[str, Any]]:
        """The stored rows among ``row_ids``, by row id (ids not stored are left out)."""
        ids = sorted(set(int(r) for r in row_ids))
        out: list[dict[str, Any]] = []
        for lo in range(0, len(ids), 500):  # SQLite caps the number of bound parameters
            chunk = ids[lo:lo + 500]
            out += self._select_results(f"WHERE row_id IN ({','.join('?' * len(chunk))})", tuple(chunk))
        return out

    def results_in_batches(self, lo: int, hi: int) -> list[dict[str, Any]]:
        """Rows labelled in batches lo <= batch < hi, by row id: what earlier batches settled."""
        return self._select_results("WHERE batch >= ? AND batch < ?", (lo, hi))
    def iter_results(self, chunk_rows: int = FINISH_CHUNK_ROWS) -> Iterator[list[dict[str, Any]]]:
        """Every stored row by row id, ``chunk_rows`` ids at a time: a pass over a large run in bounded memory."""
        top = self._db.execute("SELECT MAX(row_id) FROM results").fetchone()[0]
        for lo in range(0, -1 if top is None else top + 1, chunk_rows):
            yield self.results_between(lo, lo + chunk_rows)

    def covers(self, n_rows: int) -> bool:
        """Exactly the rows 0..n_rows-1 are stored (row ids are unique, so count and bounds say it)."""
        count, lo, hi = self._db.execute("SELECT COUNT(*), MIN(row_id), MAX(row_id) FROM results").fetchone()
        return count == n_rows and (n_rows == 0 or (lo, hi) == (0, n_rows - 1))

    def decisions_between(self, lo: int, hi: int) -> dict[int, tuple[str | None, str, float | None]]:
        """row id -> (label, label source, confidence) for lo <= row_id < hi: a relabelling's comparison
        needs these columns only, not the votes."""
        rows = self._db.execute("SELECT row_id, label, label_source, confidence FROM results "
                                "WHERE row_id >= ? AND row_id < ?", (lo, hi))
        return {rid: (label, source, conf) for rid, label, source, conf in rows}

    def results_with_source(self, label_source: str) -> list[dict[str, Any]]:
        """The rows of one label source, by row id (selected in SQL, not filtered from every row)."""
        return self._select_results("WHERE label_source = ?", (label_source,))

    def count_between(self, lo: int, hi: int) -> int:
        return self._db.execute("SELECT COUNT(*) FROM results WHERE row_id >= ? AND row_id < ?", (lo, hi)).fetchone()[0]

    def result(self, row_id: int) -> dict[str, Any] | None:
        found = self._select_results("WHERE row_id = ?", (row_id,))
        return found[0] if found else None

    def resume_point(self, order: Sequence[int] | None = None) -> tuple[int, int]:
        """(the position in ``order`` (default: row-id order) of the first row with no result, the next
        batch index): where a resumed run goes on. The store is the truth: a checkpoint may lag one step
        behind it after a kill, never ahead."""
        done = {row_id for (row_id,) in self._db.execute("SELECT row_id FROM results")}
        cursor = 0
        for row_id in (order if order is not None else range(len(done) + 1)):
            if int(row_id) not in done:
                break
            cursor += 1
        last = self._db.execute("SELECT MAX(batch) FROM results").fetchone()[0]
        return cursor, (last + 1 if last is not None else 0)

    def n_results(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
