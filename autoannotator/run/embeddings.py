"""Each row's sentence embedding, computed once per run and kept in the run directory.

The few-shot examples of a verification prompt are the nearest labelled rows by these vectors, and
a resumed run must make the very same prompt (else it pays for the same answer twice). Reading the
stored vectors back, instead of encoding again, makes the choice independent of how a batch of
texts happened to be padded the second time. Rows are written as they are first embedded (upserts
keyed by row id, one transaction per call), so a crash loses at most the call in flight.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

_SCHEMA = "CREATE TABLE IF NOT EXISTS embeddings (row_id INTEGER PRIMARY KEY, vector BLOB NOT NULL)"


class EmbeddingStore:
    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim = Path(path), int(dim)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def get(self, row_ids: Sequence[int], text_of: Callable[[int], str],
            encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """(len(row_ids), dim) vectors in the order asked; rows never seen are encoded (once) and stored."""
        ids = [int(r) for r in row_ids]
        found = self._load(ids)
        missing = list(dict.fromkeys(r for r in ids if r not in found))
        if missing:
            vectors = np.asarray(encode([text_of(r) for r in missing]), dtype=np.float32)
            if vectors.shape != (len(missing), self.dim):
                raise ValueError(f"the encoder gave {vectors.shape} for {len(missing)} texts of dim {self.dim}")
            with self._lock:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?)",
                                     [(r, v.tobytes()) for r, v in zip(missing, vectors)])
                self._db.execute("COMMIT")
            found.update(zip(missing, vectors))
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[r] for r in ids])

    def _load(self, row_ids: list[int]) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        unique = list(dict.fromkeys(row_ids))
        for start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            chunk = unique[start:start + 500]
            rows = self._db.execute(f"SELECT row_id, vector FROM embeddings WHERE row_id IN "
                                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
            for rid, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.shape == (self.dim,):  # a vector of another encoder is encoded again
                    found[int(rid)] = vec
        return found

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
