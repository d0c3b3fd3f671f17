"""The answer cache and ledger: every verifier answer paid for, keyed by model + prompt, in the run's
``llm_cache.sqlite``. No other module touches its tables; they ask this class.

- ``verify_cache``: key -> label, tokens, and the run that paid for it (a resumed run, or another
  run sharing the directory, gets the answer free: never paid twice).
- ``request_log``: every answered request, duplicates included: the audit trail that shows a
  resumed run never re-asked what an earlier process had already paid for.
- ``human_skipped``: rows a human skipped twice (the models' majority stands for them).
- ``extra_requests``: answered requests whose answer is not the cached one (no valid label, an
  unusable body, a duplicate another process paid first) and attempts that timed out: the ledger
  counts and prices the first kind (the endpoint answered them) and counts the second apart.

A connection per operation keeps it usable from any thread; WAL keeps readers from blocking writers.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel

from autoannotator.costs import LLMUsage

HUMAN = "human"  # the model id a person's answers are recorded under

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS verify_cache (
        key TEXT PRIMARY KEY, model_id TEXT NOT NULL, label TEXT NOT NULL,
        tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
        tokens_estimated INTEGER NOT NULL, paid_by_run TEXT NOT NULL, created_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS verify_cache_run ON verify_cache (paid_by_run)",
    """CREATE TABLE IF NOT EXISTS request_log (
        key TEXT NOT NULL, run_id TEXT NOT NULL, pid INTEGER NOT NULL, at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS human_skipped (
        key TEXT PRIMARY KEY, row_id INTEGER NOT NULL, run_id TEXT NOT NULL, at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS extra_requests (
        key TEXT NOT NULL, model_id TEXT NOT NULL, run_id TEXT NOT NULL, outcome TEXT NOT NULL,
        tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, tokens_estimated INTEGER NOT NULL,
        pid INTEGER NOT NULL, at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS extra_requests_run ON extra_requests (run_id)",
)
TIMEOUT = "timeout"  # an extra_requests outcome: sent, not answered in time (billing unknown)
_CHUNK = 500  # SQLite caps the number of bound parameters


class Answer(NamedTuple):
    """One answer to store: the prompt's key, who answered, the label, what it cost and who paid."""

    key: str
    model_id: str
    label: str
    tokens_in: int
    tokens_out: int
    estimated: bool
    run_id: str


class GroupWriter:
    """Writes the answers that arrive while a write is under way together, in one transaction.

    ``await put(answer)`` returns once that answer is committed, as ``AnswerCache.put`` would, but with
    many requests in flight the answers that come back together share one commit, in one thread at a
    time: separate writers would fsync once each and queue on SQLite's write lock, holding their
    request slots meanwhile. Bound to the event loop it is first used on."""

    def __init__(self, cache: AnswerCache) -> None:
        self.cache = cache
        self._pending: list[tuple[Answer, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task | None = None

    async def put(self, answer: Answer) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((answer, future))
        if self._flusher is None or self._flusher.done():
            # A task of its own: a caller cancelled while it waits does not cancel the others' write.
            self._flusher = asyncio.ensure_future(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                stored = await asyncio.to_thread(self.cache.put_many, [a for a, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of this batch
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), ok in zip(batch, stored):
                if not future.done():
                    future.set_result(ok)


class CachedAnswer(BaseModel):
    key: str
    model_id: str
    label: str
    tokens_in: int
    tokens_out: int
    tokens_estimated: bool
    paid_by_run: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class AnswerCache:
    """``create=False`` opens for reading only: a missing file reads as an empty cache, nothing is made."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self._readonly = not create
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._conn() as conn, conn:
                conn.execute("PRAGMA journal_mode=WAL")
                for statement in _SCHEMA:
                    conn.execute(statement)

    def _conn(self) -> closing[sqlite3.Connection]:
        return closing(sqlite3.connect(self.path, timeout=30))

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        if self._readonly and not self.path.is_file():
            return []
        try:
            with self._conn() as conn:
                return conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.OperationalError:  # a cache from before a table existed: no rows of it
            return []

    def _read_keys(self, sql: str, keys: Sequence[str]) -> list[tuple]:
        out: list[tuple] = []
        for start in range(0, len(keys), _CHUNK):
            chunk = list(keys[start:start + _CHUNK])
            out += self._read(sql.format(marks=",".join("?" * len(chunk))), chunk)
        return out

    # -- answers ----------------------------------------------------------------------------------
    def get_many(self, keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """key -> (label, paid_by_run) for the keys present."""
        rows = self._read_keys("SELECT key, label, paid_by_run FROM verify_cache WHERE key IN ({marks})", keys)
        return {key: (label, run) for key, label, run in rows}

    def answers(self, keys: Sequence[str]) -> list[CachedAnswer]:
        rows = self._read_keys("SELECT key, model_id, label, tokens_in, tokens_out, tokens_estimated, paid_by_run "
                               "FROM verify_cache WHERE key IN ({marks})", keys)
        return [CachedAnswer(key=r[0], model_id=r[1], label=r[2], tokens_in=r[3], tokens_out=r[4],
                             tokens_estimated=bool(r[5]), paid_by_run=r[6]) for r in rows]

    def put(self, key: str, model_id: str, label: str, tokens_in: int, tokens_out: int,
            estimated: bool, run_id: str) -> bool:
        """Store an answer; False when one was stored for the key first (its record and payer stand;
        the caller logs this answer as a duplicate it paid for)."""
        return self.put_many([Answer(key, model_id, label, tokens_in, tokens_out, estimated, run_id)])[0]

    def put_many(self, answers: Sequence[Answer]) -> list[bool]:
        """Store several answers in one transaction (one commit, one fsync); per answer, ``put``'s result."""
        stored: list[bool] = []
        with self._conn() as conn, conn:
            now, pid = _now(), os.getpid()
            for a in answers:
                # OR IGNORE: if another process answered the same key first, its record (and payer) stands.
                cur = conn.execute("INSERT OR IGNORE INTO verify_cache VALUES (?,?,?,?,?,?,?,?)",
                                   (a.key, a.model_id, a.label, a.tokens_in, a.tokens_out, int(a.estimated),
                                    a.run_id, now))
                conn.execute("INSERT INTO request_log VALUES (?,?,?,?)", (a.key, a.run_id, pid, now))
                stored.append(cur.rowcount == 1)
        return stored

    def log_extra(self, key: str, model_id: str, run_id: str, outcome: str, tokens_in: int, tokens_out: int,
                  estimated: bool) -> None:
        """A request beyond the cached answer (see the module docstring), written the moment it is known."""
        with self._conn() as conn, conn:
            conn.execute("INSERT INTO extra_requests VALUES (?,?,?,?,?,?,?,?,?)",
                         (key, model_id, run_id, outcome, tokens_in, tokens_out, int(estimated), os.getpid(),
                          _now()))

    def extras(self, run_id: str) -> dict[str, int]:
        """outcome -> how many of the run's extra requests had it."""
        return dict(self._read("SELECT outcome, COUNT(*) FROM extra_requests WHERE run_id = ? GROUP BY outcome",
                               (run_id,)))

    def forget(self, key: str) -> None:
        """Take an answer back (a human's undo)."""
        with self._conn() as conn, conn:
            conn.execute("DELETE FROM verify_cache WHERE key = ?", (key,))

    def model_ids(self) -> list[str]:
        return [m for (m,) in self._read("SELECT DISTINCT model_id FROM verify_cache")]

    # -- the ledger -------------------------------------------------------------------------------
    def ledger(self, run_id: str, model_id: str | None = None) -> LLMUsage:
        """What ``run_id`` paid for (only ``model_id``'s answers, when given)."""
        where, params = "paid_by_run = ?", [run_id]
        if model_id is not None:
            where, params = where + " AND model_id = ?", params + [model_id]
        found = self._read("SELECT COUNT(*), COALESCE(SUM(tokens_in),0), COALESCE(SUM(tokens_out),0), "
                           f"COALESCE(MAX(tokens_estimated),0) FROM verify_cache WHERE {where}", params)
        calls, t_in, t_out, est = found[0] if found else (0, 0, 0, 0)
        x_where = where.replace("paid_by_run", "run_id")
        extra = self._read("SELECT COUNT(*), COALESCE(SUM(tokens_in),0), COALESCE(SUM(tokens_out),0), "
                           f"COALESCE(MAX(tokens_estimated),0) FROM extra_requests WHERE {x_where} AND outcome != ?",
                           [*params, TIMEOUT])
        x_calls, x_in, x_out, x_est = extra[0] if extra else (0, 0, 0, 0)
        timed = self._read(f"SELECT COUNT(*) FROM extra_requests WHERE {x_where} AND outcome = ?", [*params, TIMEOUT])
        return LLMUsage(calls=calls + x_calls, tokens_in=t_in + x_in, tokens_out=t_out + x_out,
                        tokens_estimated=bool(est or x_est), extra_calls=x_calls, timed_out=timed[0][0] if timed else 0)

    def requests(self, run_id: str | None = None) -> list[tuple[str, str, int]]:
        """(key, run_id, pid) of every answered request, oldest first."""
        if run_id is None:
            return [tuple(r) for r in self._read("SELECT key, run_id, pid FROM request_log ORDER BY rowid")]
        return [tuple(r) for r in self._read("SELECT key, run_id, pid FROM request_log WHERE run_id = ? "
                                             "ORDER BY rowid", (run_id,))]

    # -- a human's skips --------------------------------------------------------------------------
    def skipped(self, keys: Sequence[str]) -> set[str]:
        return {k for (k,) in self._read_keys("SELECT key FROM human_skipped WHERE key IN ({marks})", keys)}

    def record_skip(self, key: str, row_id: int, run_id: str) -> None:
        with self._conn() as conn, conn:
            conn.execute("INSERT OR REPLACE INTO human_skipped VALUES (?,?,?,?)", (key, row_id, run_id, _now()))

    def forget_skip(self, key: str) -> None:
        with self._conn() as conn, conn:
            conn.execute("DELETE FROM human_skipped WHERE key = ?", (key,))

    def skipped_rows(self) -> list[int]:
        return [r for (r,) in self._read("SELECT row_id FROM human_skipped ORDER BY row_id")]

    def used_human(self) -> bool:
        """Whether a person answered or skipped samples here: resuming the run asks a person again."""
        return bool(self._read("SELECT 1 FROM verify_cache WHERE model_id = ? LIMIT 1", (HUMAN,))
                    or self._read("SELECT 1 FROM human_skipped LIMIT 1"))
