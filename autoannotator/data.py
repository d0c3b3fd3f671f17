"""Reading the user's data and writing it back with labels, without ever losing, shifting or reordering a row.

DATA is a file, a directory or a glob of CSV/TSV/JSONL/JSON/Parquet shards, each possibly gzip/bz2/xz/zstd
compressed (told by its magic bytes, whatever its name). ``open_source`` scans it once, streaming (row
counts, a sha256 fingerprint of the bytes, ragged rows, undecodable bytes, empty/long/duplicate texts) and
returns a ``DataSource`` that reads rows back in chunks: memory is bounded by the chunk, not the file.
Row ids are positions in the concatenation of the shards sorted by path, so they are the same on every
read and across a resumed run. ``load_dataset`` is the whole-file view (a ``Dataset`` with a DataFrame)
that small files and older callers use; it is built from the same reader, so both agree on every row.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import glob
import gzip
import hashlib
import io
import itertools
import json
import lzma
import math
import os
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import pandas as pd

from autoannotator.errors import UserError

SUPPORTED = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet")
_SUPPORTED_TEXT = ", ".join(SUPPORTED)
COMPRESSED_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
DEFAULT_CHUNK_ROWS = 10_000
# The end of a run (final relabel, the output file, the report) walks the store in smaller windows: a stored
# record (votes as JSON, label, source, confidence) weighs several times a row of input text, and the peak of
# a run's memory came from these windows.
FINISH_CHUNK_ROWS = 2_000
_HEAD_ROWS = 10_000  # rows the text column is picked from when none is named
_LISTED = 10  # line numbers / row ids quoted in one message

csv.field_size_limit(2**31 - 1)  # a 1 MB review is one field, not an error


@dataclass
class Dataset:
    path: Path
    frame: pd.DataFrame  # every input column, in input order, cells as read
    text_column: str
    texts: list[str]  # what the models see: "" for missing cells, truncated to max_text_chars
    row_ids: list[int]  # positions 0..n-1: stable ids that checkpoints and the output refer to
    fingerprint: str  # sha256 of the file bytes, so a resumed run can tell the file changed
    gold_column: str | None = None
    gold: list[str | None] | None = None
    empty_rows: list[int] = field(default_factory=list)
    truncated_rows: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.row_ids)


def _is_missing(value: Any) -> bool:
    # pd.isna on a list/dict returns an array, so only ask it about scalars.
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _cell_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if _is_missing(value):
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def _records_frame(records: list[Any], name: str, line_of: list[int] | None = None,
                   columns: list[str] | None = None) -> pd.DataFrame:
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            where = f"line {line_of[i]}" if line_of else f"item {i + 1}"
            raise UserError(f"{name}: {where} is a JSON {type(rec).__name__}, expected an object like {{\"text\": ...}}")
    # dtype=object keeps each value exactly as parsed (no int->float coercion when a key is missing somewhere).
    frame = pd.DataFrame(records, dtype=object)
    return frame if columns is None else frame.reindex(columns=columns)


def _pick_text_column(frame: pd.DataFrame, name: str, warnings: list[str]) -> str:
    if "text" in frame.columns:
        return "text"
    averages: dict[str, float] = {}
    for col in frame.columns:
        values = [v for v in frame[col].tolist() if not _is_missing(v)]
        if values and all(isinstance(v, str) for v in values):
            averages[str(col)] = sum(map(len, values)) / len(values)
    if not averages:
        raise UserError(f"{name}: no column holds text; available columns: {_columns(frame.columns)}. "
                        f"Use --text-column NAME")
    chosen = max(averages, key=lambda c: averages[c])  # max keeps the first of equal averages
    warnings.append(f"no --text-column given and no 'text' column: using '{chosen}' (longest average text, "
                    f"{averages[chosen]:.0f} chars); pass --text-column to choose another")
    return chosen


def _columns(columns: Iterable[Any]) -> str:
    return ", ".join(repr(str(c)) for c in columns) or "(none)"


def _listed(numbers: Sequence[int], total: int) -> str:
    shown = ", ".join(map(str, numbers[:_LISTED]))
    return shown + (f" and {total - _LISTED} more" if total > _LISTED else "")


# --- locating and opening shards -----------------------------------------------------------------

def sniff_compression(path: Path) -> str | None:
    """gzip/bz2/xz/zstd by the file's first bytes: a gzip named .csv is still a gzip."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def _format_of(path: Path) -> str | None:
    """The table format from the name, a compression suffix (x.csv.gz) set aside; None when unsupported."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    return ext if ext in SUPPORTED else None


def resolve_paths(data: str | Path) -> list[Path]:
    """DATA as a file, a directory (its supported files, recursively) or a glob; sorted by path, so row ids are stable."""
    text = str(data)
    path = Path(data)
    if path.is_file():
        if _format_of(path) is None:
            raise UserError(f"unsupported data file type '{path.suffix or path.name}'; supported: {_SUPPORTED_TEXT} "
                            f"(optionally .gz/.bz2/.xz/.zst)")
        return [path]
    if path.is_dir():
        found = sorted((p for p in path.rglob("*") if p.is_file() and _format_of(p) is not None
                        and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)),
                       key=lambda p: str(p.relative_to(path)))
        if not found:
            raise UserError(f"{path} holds no data files ({_SUPPORTED_TEXT})")
        return found
    if glob.has_magic(text):
        found = sorted((Path(p) for p in glob.glob(text, recursive=True)
                        if Path(p).is_file() and _format_of(Path(p)) is not None), key=str)
        if not found:
            raise UserError(f"no data files match {text!r} ({_SUPPORTED_TEXT})")
        return found
    raise UserError(f"data file not found: {path}" if not path.exists() else f"not a file: {path}")


class _HashingReader(io.RawIOBase):
    """Hashes the bytes as the parser pulls them, so the fingerprint costs no extra read of the file."""

    def __init__(self, fh: IO[bytes]):
        self._fh = fh
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = self._fh.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.sha.update(memoryview(buffer)[:n])
        return n or 0

    def drain(self) -> str:
        """Hash what the parser did not read (a trailing blank tail) and return the hex digest."""
        while self._fh.read(1 << 20):
            pass
        return self.sha.hexdigest()

    def close(self) -> None:
        self._fh.close()
        super().close()


class _Guarded(io.RawIOBase):
    """A decompressing stream whose corrupt or truncated input is a one-line ``UserError``, not a traceback."""

    def __init__(self, stream: IO[bytes], compression: str, name: str):
        self._s, self._what = stream, f"{name}: the {compression} data is corrupt or truncated"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:
            data = self._s.read(len(buffer))
        except (EOFError, OSError, lzma.LZMAError, zlib.error, ValueError) as exc:
            raise UserError(f"{self._what} ({_one_line(exc)})") from None
        buffer[:len(data)] = data
        return len(data)


def _decompressed(raw: IO[bytes], compression: str | None, name: str) -> IO[bytes]:
    if compression is None:
        return io.BufferedReader(raw, 1 << 18)  # type: ignore[arg-type]
    return io.BufferedReader(_Guarded(_decompressor(raw, compression, name), compression, name), 1 << 18)


def _decompressor(raw: IO[bytes], compression: str, name: str) -> IO[bytes]:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[arg-type]
    if compression == "bz2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[arg-type]
    if compression == "xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[arg-type]
    try:
        import zstandard  # optional: pyarrow's codec below needs no extra package
        return zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[return-value]
    except ImportError:
        pass
    import pyarrow as pa
    if not pa.Codec.is_available("zstd"):
        raise UserError(f"{name} is zstd-compressed and this pyarrow has no zstd codec; decompress it first")
    return _ArrowStream(pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd"))  # type: ignore[return-value]


class _ArrowStream(io.RawIOBase):
    def __init__(self, stream: Any):
        self._s = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self._s.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


_error_names = itertools.count()


def _text_stream(binary: IO[bytes], newline: str) -> tuple[io.TextIOWrapper, list[int]]:
    """UTF-8 (a BOM stripped), or UTF-16 told by its BOM; bad bytes become U+FFFD and are counted, never fatal."""
    head = binary.peek(2)[:2] if hasattr(binary, "peek") else b""
    codec = "utf-16" if head in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    replaced = [0]

    def count(exc: UnicodeError) -> tuple[str, int]:
        replaced[0] += 1
        return "\ufffd", exc.end  # type: ignore[attr-defined]

    name = f"autoannotator-count-{next(_error_names)}"
    codecs.register_error(name, count)
    return io.TextIOWrapper(binary, encoding=codec, errors=name, newline=newline), replaced


# --- one parser per format: the scan and every later read go through the same code -------------

class _Rows(NamedTuple):
    """A parsed shard: its column names, then (line number, cells) per data row."""

    columns: list[str]
    rows: Iterator[tuple[int, list[Any] | dict[str, Any]]]


def _mangle(header: list[str]) -> list[str]:
    """Header names as pandas would give them: blanks 'Unnamed: i', repeats 'name.1', so no column is lost."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, col in enumerate(header):
        col = col or f"Unnamed: {i}"
        base, n = col, seen.get(col, 0)
        while col in seen:
            n += 1
            col = f"{base}.{n}"
        seen[base] = n
        seen[col] = 0
        out.append(col)
    return out


class _Ragged:
    """Rows whose field count is not the header's: the first few line numbers and how many in all."""

    def __init__(self) -> None:
        self.lines: list[int] = []
        self.count = 0

    def add(self, line: int) -> None:
        self.count += 1
        if len(self.lines) < _LISTED:
            self.lines.append(line)


def _csv_rows(text: io.TextIOWrapper, sep: str, name: str, ragged: _Ragged | None) -> _Rows:
    """Every data row with exactly the header's fields; a row with more or fewer is recorded in ``ragged``
    never padded, cut or shifted. Without a ``ragged`` list the first one is refused."""
    kind = "TSV" if sep == "\t" else "CSV"
    reader = csv.reader(text, delimiter=sep, strict=True)
    last = [0]

    def rows_of() -> Iterator[tuple[int, list[str]]]:
        while True:
            start = last[0] + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                msg = str(exc)
                detail = 'a quoted field is never closed (unbalanced ")' if "end of data" in msg else msg
                raise UserError(f"{name}: malformed {kind} at line {start}: {detail}") from None
            last[0] = reader.line_num
            yield start, row

    lines = rows_of()
    header: list[str] | None = None
    for _, row in lines:
        if row:  # blank lines before the header are no header
            header = row
            break
    if header is None:
        return _Rows([], iter(()))
    columns = _mangle(header)
    width = len(columns)

    def data() -> Iterator[tuple[int, list[Any]]]:
        for line, row in lines:
            if not row:
                if width > 1:  # a blank line is no row when there are several columns (",," is one, and is kept)
                    continue
                row = [""]  # in a one-column file it is an empty text: pandas writes an empty last cell so
            if any("\x00" in cell for cell in row):
                raise UserError(f"{name}: line {line} holds a NUL byte: this is not a text {kind} file")
            if len(row) != width:
                if ragged is None:
                    raise UserError(f"{name}: malformed {kind} at line {line}: expected {width} fields, saw "
                                    f"{len(row)}")
                ragged.add(line)
                continue
            yield line, row

    return _Rows(columns, data())


def _jsonl_rows(text: io.TextIOWrapper, name: str) -> _Rows:
    def data() -> Iterator[tuple[int, dict[str, Any]]]:
        # newline="\n" on the stream: U+2028 and friends are legal raw inside a JSON string.
        for lineno, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{name}: malformed JSON at line {lineno}: {exc.msg} (column {exc.colno})") from None
            if not isinstance(rec, dict):
                raise UserError(f"{name}: line {lineno} is a JSON {type(rec).__name__}, expected an object like "
                                f"{{\"text\": ...}}")
            yield lineno, rec

    return _Rows([], data())  # columns: the union of keys, found by the scan


def _json_rows(text: io.TextIOWrapper, name: str) -> _Rows:
    """A JSON list is one document: read whole (name the file .jsonl to stream it)."""
    body = text.read()
    try:
        data = json.loads(body) if body.strip() else []
    except json.JSONDecodeError as exc:
        hint = "; if it holds one object per line, name it .jsonl" if exc.msg == "Extra data" else ""
        raise UserError(f"{name}: malformed JSON at line {exc.lineno}: {exc.msg}{hint}") from None
    if not isinstance(data, list):
        raise UserError(f"{name}: expected a JSON list of objects, got a {type(data).__name__}")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise UserError(f"{name}: item {i + 1} is a JSON {type(rec).__name__}, expected an object like "
                            f"{{\"text\": ...}}")
    return _Rows([], ((i + 1, rec) for i, rec in enumerate(data)))


@dataclass
class Shard:
    path: Path
    fmt: str  # one of SUPPORTED
    compression: str | None
    first_row: int = 0
    n_rows: int = 0
    sha256: str = ""
    columns: list[str] = field(default_factory=list)


def _refuse_odd_content(path: Path, fmt: str, compression: str | None) -> None:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK\x03\x04"):
        raise UserError(f"{path.name} is a zip archive; unzip it and pass the file (or the folder) inside")
    if fmt == ".parquet" and compression is not None:
        raise UserError(f"{path.name} is {compression}-compressed; Parquet compresses itself: decompress it first")
    if fmt != ".parquet" and head == b"PAR1":
        raise UserError(f"{path.name} is a Parquet file; name it .parquet")


class _Opened(NamedTuple):
    rows: _Rows
    hasher: _HashingReader
    replaced: list[int]


def _open_shard(shard: Shard, ragged: _Ragged | None, stack: list[IO[Any]]) -> _Opened:
    hasher = _HashingReader(open(shard.path, "rb"))
    binary = _decompressed(hasher, shard.compression, shard.path.name)
    newline = "" if shard.fmt in (".csv", ".tsv") else "\n"
    text, replaced = _text_stream(binary, newline)
    stack.append(text)
    name = shard.path.name
    if shard.fmt in (".csv", ".tsv"):
        rows = _csv_rows(text, "\t" if shard.fmt == ".tsv" else ",", name, ragged)
    elif shard.fmt in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(text, name)
    else:
        rows = _json_rows(text, name)
    return _Opened(rows, hasher, replaced)


def _parquet_frames(shard: Shard, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(shard.path)
        batches = pf.iter_batches(batch_size=chunk_rows)
        for batch in batches:
            frame = batch.to_pandas()
            # a stored index is user data: keep it as a column
            yield frame.reset_index(drop=isinstance(frame.index, pd.RangeIndex))
    except UserError:
        raise
    except Exception as exc:  # pyarrow raises many types; all mean "not a readable parquet file"
        raise UserError(f"{shard.path.name}: not a readable Parquet file ({_one_line(exc)})") from None


def _row_frame(batch: list[list[Any] | dict[str, Any]], columns: list[str], name: str) -> pd.DataFrame:
    if batch and isinstance(batch[0], dict):
        return _records_frame(batch, name, columns=columns)  # type: ignore[arg-type]
    return pd.DataFrame(batch, columns=columns, dtype=object)


def _shard_frames(shard: Shard, chunk_rows: int, skip: int = 0) -> Iterator[pd.DataFrame]:
    """The shard's rows from position ``skip``, ``chunk_rows`` at a time, with the source's columns."""
    if shard.fmt == ".parquet":
        seen = 0
        for frame in _parquet_frames(shard, chunk_rows):
            lo = max(skip - seen, 0)
            seen += len(frame)
            if lo < len(frame):
                yield frame.iloc[lo:].reset_index(drop=True).reindex(columns=shard.columns)
        return
    stack: list[IO[Any]] = []
    try:
        opened = _open_shard(shard, None, stack)
        rows = itertools.islice(opened.rows.rows, skip, None)
        columns = shard.columns
        while batch := [cells for _, cells in itertools.islice(rows, chunk_rows)]:
            yield _row_frame(batch, columns, shard.path.name)
    finally:
        for fh in stack:
            fh.close()


# --- the scan ---------------------------------------------------------------------------------------

class _Stats:
    """What the scan learns about the text and gold columns, in memory that grows by 8 bytes a row at most."""

    def __init__(self, max_text_chars: int):
        self.max_text_chars = max_text_chars
        self.n = 0
        self.empty: list[int] = []
        self.n_empty = 0
        self.truncated: list[int] = []
        self.n_truncated = 0
        self.lossy_rows = 0
        self._hashes: list[np.ndarray] = []
        self._pending: list[int] = []

    def add(self, text: str) -> None:
        rid = self.n
        self.n += 1
        if not text.strip():
            self.n_empty += 1
            if len(self.empty) < _LISTED:
                self.empty.append(rid)
        if len(text) > self.max_text_chars:
            self.n_truncated += 1
            if len(self.truncated) < _LISTED:
                self.truncated.append(rid)
        self._pending.append(int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                                                            digest_size=8).digest(), "little", signed=True))
        if len(self._pending) >= 4096:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._hashes.append(np.array(self._pending, dtype=np.int64))
            self._pending = []

    def duplicates(self) -> int:
        self._flush()
        if not self._hashes:
            return 0
        allh = np.concatenate(self._hashes)
        return int(len(allh) - len(np.unique(allh)))


class Chunk(NamedTuple):
    row_ids: list[int]
    texts: list[str]  # what the models see: "" for a missing cell, cut to max_text_chars
    gold: list[str | None] | None


@dataclass
class DataSource:
    """The user's rows, read in chunks; ``n_rows``, ``fingerprint`` and the warnings come from one streaming scan."""

    path: Path  # DATA as given: a file, a directory or a glob
    shards: list[Shard]
    columns: list[str]
    text_column: str
    gold_column: str | None
    max_text_chars: int
    n_rows: int
    fingerprint: str
    n_empty: int = 0
    warnings: list[str] = field(default_factory=list)
    first_empty: list[int] = field(default_factory=list)
    truncated_rows: list[int] = field(default_factory=list)

    @property
    def fmt(self) -> str:
        """The first shard's format: what a default output file is written as."""
        return self.shards[0].fmt

    def iter_frames(self, start_row: int = 0, chunk_rows: int = DEFAULT_CHUNK_ROWS
                    ) -> Iterator[tuple[list[int], pd.DataFrame]]:
        """(row ids, every input column) from ``start_row``, ``chunk_rows`` at a time, across shard ends."""
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        parts: list[pd.DataFrame] = []
        have = 0
        next_id = start_row
        for shard in self.shards:
            if shard.first_row + shard.n_rows <= start_row:
                continue
            skip = max(start_row - shard.first_row, 0)
            for frame in _shard_frames(shard, chunk_rows, skip):
                frame = frame.reindex(columns=self.columns)
                while len(frame):
                    take = frame.iloc[:chunk_rows - have]
                    frame = frame.iloc[len(take):]
                    parts.append(take)
                    have += len(take)
                    if have == chunk_rows:
                        out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
                        yield list(range(next_id, next_id + have)), out
                        next_id += have
                        parts, have = [], 0
        if have:
            out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
            yield list(range(next_id, next_id + have)), out

    def _chunk_of(self, row_ids: list[int], frame: pd.DataFrame) -> Chunk:
        texts = [_cell_text(v)[:self.max_text_chars] for v in frame[self.text_column].tolist()]
        gold = None
        if self.gold_column is not None:
            gold = [(_cell_text(v).strip() or None) for v in frame[self.gold_column].tolist()]
        return Chunk(row_ids, texts, gold)

    def iter_chunks(self, start_row: int = 0, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Chunk]:
        """(row ids, texts, gold) from ``start_row``: what the loop needs, never the whole file at once."""
        for row_ids, frame in self.iter_frames(start_row, chunk_rows):
            yield self._chunk_of(row_ids, frame)

    def chunk(self, start_row: int, n: int) -> Chunk:
        """The ``n`` rows from ``start_row`` (fewer at the end of the data)."""
        return next(self.iter_chunks(start_row, n), Chunk([], [], [] if self.gold_column else None))

    def texts_for(self, row_ids: Iterable[int], chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict[int, str]:
        """The model texts of the given rows, in one streaming pass from the first of them."""
        wanted = sorted(set(row_ids))
        if not wanted:
            return {}
        if wanted[0] < 0 or wanted[-1] >= self.n_rows:
            raise IndexError(f"row ids outside 0..{self.n_rows - 1}")
        out: dict[int, str] = {}
        pos = 0
        for chunk in self.iter_chunks(wanted[0], chunk_rows):
            first, last = chunk.row_ids[0], chunk.row_ids[-1]
            while pos < len(wanted) and wanted[pos] <= last:
                out[wanted[pos]] = chunk.texts[wanted[pos] - first]
                pos += 1
            if pos == len(wanted):
                break
        return out

    def sample_texts(self, n: int) -> list[str]:
        """``n`` texts spread evenly over the rows (one streaming pass): what a planner may look at."""
        ids = sorted({int(i) for i in np.linspace(0, self.n_rows - 1, num=min(n, self.n_rows))})
        found = self.texts_for(ids)
        return [found[i] for i in ids]

    def input_paths(self) -> list[Path]:
        return [s.path for s in self.shards]


def _head_frame(shard: Shard) -> pd.DataFrame:
    """The first rows of the first shard, for picking the text column (ragged rows left to the scan)."""
    if shard.fmt == ".parquet":
        return next(_parquet_frames(shard, _HEAD_ROWS), pd.DataFrame())
    stack: list[IO[Any]] = []
    try:
        opened = _open_shard(shard, _Ragged(), stack)
        batch = [cells for _, cells in itertools.islice(opened.rows.rows, _HEAD_ROWS)]
        if not batch:
            return pd.DataFrame(columns=opened.rows.columns)
        if isinstance(batch[0], dict):
            return _records_frame(batch, shard.path.name)  # type: ignore[arg-type]
        return pd.DataFrame(batch, columns=opened.rows.columns, dtype=object)
    finally:
        for fh in stack:
            fh.close()


def _scan_shard(shard: Shard, text_column: str | None, stats: _Stats) -> bool:
    """Count, hash and check one shard, feeding the text column's values to ``stats``; refuses ragged rows.
    Returns whether undecodable bytes were replaced."""
    name = shard.path.name
    if shard.fmt == ".parquet":
        import pyarrow.parquet as pq

        hasher = hashlib.sha256()
        with open(shard.path, "rb") as fh:
            while block := fh.read(1 << 20):
                hasher.update(block)
        shard.sha256 = hasher.hexdigest()
        for frame in _parquet_frames(shard, DEFAULT_CHUNK_ROWS):
            if not shard.columns:
                shard.columns = [str(c) for c in frame.columns]
            shard.n_rows += len(frame)
            if text_column in frame.columns:
                for v in frame[text_column].tolist():
                    stats.add(_cell_text(v))
        if not shard.columns:  # an empty file still has a schema
            shard.columns = list(pq.ParquetFile(shard.path).schema_arrow.names)
        return False
    stack: list[IO[Any]] = []
    ragged = _Ragged()
    try:
        opened = _open_shard(shard, ragged, stack)
        columns: dict[str, None] = dict.fromkeys(opened.rows.columns)
        text_at = opened.rows.columns.index(text_column) if text_column in columns else None
        for _, cells in opened.rows.rows:
            shard.n_rows += 1
            if isinstance(cells, dict):
                for key in cells:
                    if key not in columns:
                        columns[key] = None
                text = _cell_text(cells.get(text_column)) if text_column is not None else ""
                if opened.replaced[0] and any(isinstance(v, str) and "\ufffd" in v for v in cells.values()):
                    stats.lossy_rows += 1
            else:
                text = cells[text_at] if text_at is not None else ""
                if opened.replaced[0] and any("\ufffd" in c for c in cells):
                    stats.lossy_rows += 1
            stats.add(text)
        shard.sha256 = opened.hasher.drain()
        shard.columns = list(columns)
    finally:
        for fh in stack:
            fh.close()
    if ragged.count:
        kind = "TSV" if shard.fmt == ".tsv" else "CSV"
        raise UserError(f"{name}: malformed {kind}: {ragged.count} row(s) do not have the header's "
                        f"{len(shard.columns)} fields (a stray delimiter or a missing quote), at line "
                        f"{_listed(ragged.lines, ragged.count)}; fix or quote them: no row is dropped or shifted")
    return bool(opened.replaced[0])


def open_source(data: str | Path, text_column: str | None, gold_column: str | None = None,
                max_text_chars: int = 20000) -> DataSource:
    """Scan DATA once, streaming, and return a reader over it. Every refusal is a one-line ``UserError``."""
    paths = resolve_paths(data)
    shards: list[Shard] = []
    for path in paths:
        fmt = _format_of(path)
        assert fmt is not None
        compression = sniff_compression(path)
        _refuse_odd_content(path, fmt, compression)
        shards.append(Shard(path=path, fmt=fmt, compression=compression))
    label = Path(data).name if len(shards) == 1 else str(data)
    warnings: list[str] = []
    if text_column is None:
        head = _head_frame(shards[0])
        if len(head) == 0 and len(head.columns) == 0:
            raise UserError(f"{label} has no rows (the file is empty or holds only a header)")
        if len(head):
            text_column = _pick_text_column(head, label, warnings)
    stats = _Stats(max_text_chars)
    lossy_shards: list[str] = []
    for shard in shards:
        shard.first_row = stats.n
        if _scan_shard(shard, text_column, stats):
            lossy_shards.append(shard.path.name)
    columns: dict[str, None] = {}
    for shard in shards:
        columns.update(dict.fromkeys(shard.columns))
    n = stats.n
    if n == 0:
        raise UserError(f"{label} has no rows (the file is empty or holds only a header)")
    assert text_column is not None
    if text_column not in columns:
        raise UserError(f"text column '{text_column}' not found in {label}; available columns: "
                        f"{_columns(columns)}. Pass --text-column NAME")
    if gold_column is not None and gold_column not in columns:
        raise UserError(f"gold column '{gold_column}' not found in {label}; available columns: "
                        f"{_columns(columns)}. Pass --gold-column NAME")
    for shard in shards:  # a CSV shard without the text column would label nothing
        if shard.fmt in (".csv", ".tsv", ".parquet") and text_column not in shard.columns:
            raise UserError(f"{shard.path.name} has no '{text_column}' column (columns: {_columns(shard.columns)}); "
                            f"every shard needs the text column")
    if lossy_shards:
        warnings.append(f"{', '.join(lossy_shards)} is not valid UTF-8: undecodable bytes in {stats.lossy_rows} "
                        f"row(s) were replaced with U+FFFD; re-save the file as UTF-8 to keep them")
    if stats.n_truncated:
        warnings.append(f"{stats.n_truncated} row(s) longer than {max_text_chars} characters: the models see the "
                        f"first {max_text_chars}, the output keeps the full text")
    if stats.n_empty:
        warnings.append(f"{stats.n_empty} row(s) have an empty text (kept in the output; first row ids: "
                        f"{stats.empty[:5]})")
    if dupes := stats.duplicates():
        warnings.append(f"{dupes} row(s) repeat the text of an earlier row (kept; each row is labelled on its own)")
    if len(shards) == 1:
        fingerprint = shards[0].sha256
    else:
        base = Path(data) if Path(data).is_dir() else None
        listing = "\n".join(f"{s.path.relative_to(base) if base else s.path}\t{s.sha256}" for s in shards)
        fingerprint = hashlib.sha256(listing.encode("utf-8")).hexdigest()
    return DataSource(path=Path(data), shards=shards, columns=list(columns), text_column=text_column,
                      gold_column=gold_column, max_text_chars=max_text_chars, n_rows=n, fingerprint=fingerprint,
                      n_empty=stats.n_empty, warnings=warnings, first_empty=stats.empty,
                      truncated_rows=stats.truncated)


def load_dataset(path: str | Path, text_column: str | None, gold_column: str | None = None,
                 max_text_chars: int = 20000) -> Dataset:
    """The whole data set in memory (small files, the bench, older callers): the same reader as ``open_source``."""
    source = open_source(path, text_column, gold_column, max_text_chars)
    frames: list[pd.DataFrame] = []
    texts: list[str] = []
    gold: list[str | None] | None = [] if gold_column is not None else None
    full_lengths: list[int] = []
    for row_ids, frame in source.iter_frames(0, max(source.n_rows, 1)):
        frames.append(frame)
        chunk = source._chunk_of(row_ids, frame)
        texts.extend(chunk.texts)
        full_lengths.extend(len(_cell_text(v)) for v in frame[source.text_column].tolist())
        if gold is not None and chunk.gold is not None:
            gold.extend(chunk.gold)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    truncated = [i for i, n in enumerate(full_lengths) if n > max_text_chars]
    return Dataset(path=Path(path), frame=frame, text_column=source.text_column, texts=texts,
                   row_ids=list(range(len(texts))), fingerprint=source.fingerprint, gold_column=gold_column,
                   gold=gold, empty_rows=empty, truncated_rows=truncated, warnings=list(source.warnings))


def default_output_path(data_path: str | Path, run_dir: str | Path, fmt: str | None = None) -> Path:
    """``<stem>.labelled<ext>`` in the run dir; a compressed input gives an uncompressed output of its format,
    a directory or glob one file in the first shard's format (``fmt``)."""
    data_path = Path(data_path)
    name = data_path.name
    if data_path.suffix.lower() in COMPRESSED_SUFFIXES:
        name = name[: -len(data_path.suffix)]
    stem, ext = os.path.splitext(name)
    if ext.lower() not in SUPPORTED:
        stem, ext = (name.rstrip("*?/") or "data"), (fmt or ".jsonl")
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("_.") or "data"
    return Path(run_dir) / f"{stem}.labelled{ext}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):  # parquet cells arrive as numpy scalars, which json cannot encode
        value = value.item()
    # JSON has no NaN/inf: a missing cell is null (json.dumps would write the non-standard NaN).
    return None if _is_missing(value) or (isinstance(value, float) and not math.isfinite(value)) else value


def _dump_records(frame: pd.DataFrame, fh: io.TextIOBase, as_list: bool) -> None:
    # Own encoder rather than DataFrame.to_json: that one rounds floats to 10 digits and escapes "/".
    cols = [str(c) for c in frame.columns]
    lines = (json.dumps({c: _jsonable(v) for c, v in zip(cols, row)}, ensure_ascii=False, default=str)
             for row in frame.itertuples(index=False, name=None))
    if as_list:
        fh.write("[\n" + ",\n".join(lines) + "\n]\n")
    else:
        for line in lines:
            fh.write(line + "\n")


def clash_renames(input_columns: Sequence[Any], new_columns: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The new columns keep their documented names; a clashing input column is renamed, never dropped,
    so `label` in the output is always autoannotator's label. Returns (renames, warnings)."""
    renames: dict[str, str] = {}
    warnings: list[str] = []
    existing = set(input_columns)
    for name in new_columns:
        if name in existing:
            final = f"input_{name}"
            while final in existing or final in new_columns or final in renames.values():
                final = f"input_{final}"
            renames[name] = final
            warnings.append(f"the input's own '{name}' column is written as '{final}' (the output's '{name}' "
                            f"is autoannotator's)")
    return renames, warnings


def check_output_path(out_path: Path, inputs: Sequence[Path]) -> str:
    """The output's format, or a one-line refusal: unsupported type, or the output would overwrite an input."""
    ext = out_path.suffix.lower()
    if ext not in SUPPORTED:
        raise UserError(f"unsupported output file type '{out_path.suffix or out_path.name}'; supported: {_SUPPORTED_TEXT}")
    resolved = out_path.resolve()
    if any(resolved == Path(p).resolve() for p in inputs):
        raise UserError(f"refusing to overwrite the input file {out_path}; choose another output path")
    return ext


def write_labelled(dataset: Dataset, columns: dict[str, Sequence[Any]], out_path: str | Path) -> list[str]:
    """Write every input row, in order, plus `columns`; returns warnings. Refuses rather than drop rows."""
    out_path = Path(out_path)
    ext = check_output_path(out_path, [dataset.path])
    n = len(dataset.frame)
    for name, values in columns.items():
        if len(values) != n:
            raise UserError(f"refusing to write {out_path.name}: column '{name}' has {len(values)} values "
                            f"for {n} input rows (the output must keep every row)")
    renames, warnings = clash_renames(list(dataset.frame.columns), list(columns))
    out = dataset.frame.copy(deep=False).rename(columns=renames)
    for name, values in columns.items():
        out[name] = list(values)  # list(): a Series would be aligned on its index, not by position
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory so os.replace is an atomic rename; not mkstemp, whose 0600 mode would stick to the output.
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if ext == ".parquet":
            try:
                out.to_parquet(tmp, index=False)
            except Exception as exc:  # pyarrow type errors on mixed-type object columns
                raise UserError(f"cannot write {out_path.name} as Parquet ({_one_line(exc)}); "
                                f"choose a .jsonl or .csv output") from None
        elif ext in (".csv", ".tsv"):
            out.to_csv(tmp, index=False, sep="\t" if ext == ".tsv" else ",", encoding="utf-8")
        else:
            with open(tmp, "w", encoding="utf-8") as fh:
                _dump_records(out, fh, as_list=ext == ".json")
        with open(tmp, "rb+") as fh:  # flush to disk before the rename so a crash leaves old file or new
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return warnings


class RowTexts:
    """``text_of(row_id)`` for the annotation loop, backed by a ``DataSource`` instead of a list of every text.

    The loop walks the rows in order, so one live reader serves them window by window (a read restarts only
    on a jump: a resume, or a row behind the window). Rows far behind the window (the hard-sample pool a
    fine-tuning round trains on) are fetched in one streaming pass for all of ``wanted()`` at the first miss,
    so a round costs one pass over the data, not one per row. Memory: one window plus those rows.
    """

    def __init__(self, source: DataSource, window_rows: int = DEFAULT_CHUNK_ROWS,
                 wanted: Callable[[], Iterable[int]] | None = None):
        self.source = source
        self.window_rows = max(1, window_rows)
        self.wanted = wanted
        self._lo = 0
        self._texts: list[str] = []
        self._prev_lo = 0
        self._prev: list[str] = []  # the window before: a batch may straddle two windows
        self._it: Iterator[Chunk] | None = None
        self._extra: dict[int, str] = {}
        self.passes = 0  # reads started: for tests and the benchmark

    def _advance(self, row_id: int) -> None:
        hi = self._lo + len(self._texts)
        if self._it is None or row_id < self._lo or row_id >= hi + self.window_rows:
            # Windows start on multiples of window_rows: a loop that shuffles rows within such blocks
            # (graphs/annotate.py processing_order) then reads each block once.
            start = row_id - row_id % self.window_rows
            self._it = self.source.iter_chunks(start, self.window_rows)
            self.passes += 1
            self._lo, self._texts = start, []
            hi = start
        while row_id >= self._lo + len(self._texts):
            chunk = next(self._it, None)
            if chunk is None:
                raise IndexError(f"row {row_id} is past the end of the data ({self.source.n_rows} rows)")
            self._prev_lo, self._prev = self._lo, self._texts
            self._lo, self._texts = chunk.row_ids[0], chunk.texts
        self._extra.clear()  # the loop moved on: the pool's texts are fetched again when next needed

    def __call__(self, row_id: int) -> str:
        at = row_id - self._lo
        if 0 <= at < len(self._texts):
            return self._texts[at]
        if 0 <= row_id - self._prev_lo < len(self._prev):
            return self._prev[row_id - self._prev_lo]
        if row_id in self._extra:
            return self._extra[row_id]
        if row_id >= self._lo:  # ahead: the loop's next window
            self._advance(row_id)
            return self._texts[row_id - self._lo]
        wanted = set(self.wanted()) if self.wanted is not None else set()
        wanted.add(row_id)
        self._extra = self.source.texts_for(wanted)
        self.passes += 1
        return self._extra[row_id]

    def is_empty(self, row_id: int) -> bool:
        return not self(row_id).strip()


class EmptyRows:
    """``row_id in empty_rows`` without a set of every empty row: asks the text itself."""

    def __init__(self, text_of: Callable[[int], str]):
        self._text_of = text_of

    def __contains__(self, row_id: object) -> bool:
        return isinstance(row_id, int) and not self._text_of(row_id).strip()
