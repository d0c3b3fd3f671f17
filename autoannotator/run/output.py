"""The labelled output file: every input row, in order, once, with the run's columns added.

Written as the run goes: one Parquet shard per accepted chunk, then the file the user asked for assembled
at the end by streaming the input and the shards side by side (``ShardWriter``, ``assemble``). The
whole-frame path (``write_run_output``) serves runs whose data set is in memory.

Why shards: a run over millions of rows must not hold its labels in memory until the end, and a crash must
not lose what was labelled. A shard holds only ``row_id`` and the new columns (the input's own columns are
read back from the input at assembly, so shards stay small whatever the input's width). Shards are named by
the row range they cover and written atomically, so a chunk that re-runs after a crash rewrites the same
shard: every input row appears once in the output, in input order, or assembly refuses.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from autoannotator.data import (
    FINISH_CHUNK_ROWS,
    DataSource,
    Dataset,
    _dump_records,
    _one_line,
    check_output_path,
    clash_renames,
    write_labelled,
)
from autoannotator.errors import UserError
from autoannotator.run.plan import RunPlan

if TYPE_CHECKING:
    from autoannotator.run.store import RunStore

_SHARD = re.compile(r"^part-(\d{12})-(\d{12})\.parquet$")
OUTPUT_COLUMNS = ("label", "label_source", "confidence", "uncertainty", "votes")
_TYPES = {"label": pa.string(), "label_source": pa.string(), "confidence": pa.float64(), "uncertainty": pa.float64(), "votes": pa.string()}


def _runs(ids: list[int]) -> list[list[int]]:
    """Positions of ``ids`` (ascending) grouped into runs of consecutive row ids."""
    runs: list[list[int]] = []
    for pos, rid in enumerate(ids):
        if runs and ids[runs[-1][-1]] == rid - 1:
            runs[-1].append(pos)
        else:
            runs.append([pos])
    return runs


def _atomic(path: Path) -> Path:
    # Same directory so os.replace is an atomic rename; not mkstemp, whose 0600 mode would stick to the output.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:  # on disk before the rename, so a crash leaves the old file or the new one
        os.fsync(fh.fileno())
    os.replace(tmp, final)


class ShardWriter:
    """Appends labelled chunks under ``folder`` (``part-<first row>-<last row>.parquet``).

    With ``buffer_rows`` > 0, contiguous chunks are gathered into shards of about that many rows (a loop's
    64-row batches would otherwise make one small file each); rows still in the buffer at a crash are not
    lost, because the run store holds them and ``missing`` names them for a resumed run to fill.
    """

    def __init__(self, folder: Path, columns: Sequence[str] = OUTPUT_COLUMNS, buffer_rows: int = 0):
        self.folder = Path(folder)
        self.columns = list(columns)
        self.buffer_rows = buffer_rows
        self._buf_ids: list[int] = []
        self._buf: dict[str, list[Any]] = {c: [] for c in self.columns}
        self.folder.mkdir(parents=True, exist_ok=True)

    def append_stored(self, store: RunStore, lo: int, hi: int) -> None:
        """Rows lo <= row_id < hi, read from the run store ``FINISH_CHUNK_ROWS`` at a time (a stored record
        weighs several times a row of text)."""
        for start in range(lo, hi, FINISH_CHUNK_ROWS):
            part = store.results_between(start, min(hi, start + FINISH_CHUNK_ROWS))
            self.append([r["row_id"] for r in part], label_columns(part))

    def append(self, row_ids: Sequence[int], values: dict[str, Sequence[Any]]) -> Path | None:
        """Add one chunk of contiguous rows; returns the shard written, if one was."""
        ids = list(row_ids)
        self._check(ids, values)
        if not self.buffer_rows:
            return self._write(ids, values)
        written = None
        if self._buf_ids and ids[0] != self._buf_ids[-1] + 1:
            written = self.flush()
        self._buf_ids.extend(ids)
        for c in self.columns:
            self._buf[c].extend(values[c])
        if len(self._buf_ids) >= self.buffer_rows:
            written = self.flush()
        return written

    def flush(self) -> Path | None:
        """Write the buffered rows, less any an existing shard already holds (a batch re-run after a crash)."""
        ids, values = self._buf_ids, self._buf
        self._buf_ids, self._buf = [], {c: [] for c in self.columns}
        covered = {r for lo, hi, _ in self.shards() if ids and lo <= ids[-1] and hi >= ids[0]
                   for r in range(max(lo, ids[0]), min(hi, ids[-1]) + 1)}
        keep = [i for i, r in enumerate(ids) if r not in covered]
        if not keep:
            return None
        path = None
        for run in _runs([ids[i] for i in keep]):  # what is left is one or more contiguous runs
            at = [keep[j] for j in run]
            path = self._write([ids[i] for i in at], {c: [values[c][i] for i in at] for c in self.columns})
        return path

    def _check(self, ids: list[int], values: dict[str, Sequence[Any]]) -> None:
        if not ids:
            raise ValueError("an empty chunk has nothing to write")
        if ids != list(range(ids[0], ids[0] + len(ids))):
            raise ValueError("a chunk's row ids must be contiguous and ascending")
        if set(values) != set(self.columns):
            raise ValueError(f"a chunk needs exactly the columns {self.columns}, got {sorted(values)}")
        for name, col in values.items():
            if len(col) != len(ids):
                raise ValueError(f"column {name!r} has {len(col)} values for {len(ids)} rows")

    def _write(self, ids: list[int], values: dict[str, Sequence[Any]]) -> Path:
        """One shard; re-writing the same rows replaces their shard."""
        arrays = [pa.array(ids, type=pa.int64())] + [
            pa.array(list(values[c]), type=_TYPES.get(c)) for c in self.columns]
        table = pa.Table.from_arrays(arrays, names=["row_id", *self.columns])
        final = self.folder / f"part-{ids[0]:012d}-{ids[-1]:012d}.parquet"
        for stale in self._overlapping(ids[0], ids[-1], final.name):
            stale.unlink()  # an earlier, differently cut chunk over these rows: the new one supersedes it
        tmp = _atomic(final)
        try:
            pq.write_table(table, tmp)
            _fsync_replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def _overlapping(self, first: int, last: int, keep: str) -> list[Path]:
        out = []
        for lo, hi, path in self.shards():
            if path.name != keep and lo <= last and hi >= first:
                if lo < first or hi > last:
                    raise ValueError(f"shard {path.name} covers rows outside {first}..{last}; refusing to drop them")
                out.append(path)
        return out

    def shards(self) -> list[tuple[int, int, Path]]:
        """(first row, last row, path) of each shard, in row order."""
        found = []
        for path in self.folder.iterdir():
            if m := _SHARD.match(path.name):
                found.append((int(m.group(1)), int(m.group(2)), path))
        return sorted(found)

    def rewrite_stored(self, store: RunStore, row_ids: Sequence[int]) -> int:
        """Write again, from the store, every shard holding one of ``row_ids`` (rows whose record changed after
        their shard was written: the run's finishing steps relabel and re-vote). Buffered rows are flushed
        first. A shard is rewritten under its own name, atomically: a crash leaves the old one or the new one,
        and a resumed run's finishing steps rewrite it again. Returns how many shards were rewritten."""
        self.flush()
        want = sorted({int(r) for r in row_ids})
        rewritten = 0
        for lo, hi, _ in self.shards():
            at = bisect.bisect_left(want, lo)
            if at == len(want) or want[at] > hi:
                continue
            ids: list[int] = []
            values: dict[str, list[Any]] = {c: [] for c in self.columns}
            for start in range(lo, hi + 1, FINISH_CHUNK_ROWS):
                part = store.results_between(start, min(hi + 1, start + FINISH_CHUNK_ROWS))
                ids += [r["row_id"] for r in part]
                for c, col in label_columns(part).items():
                    values[c] += col
            if ids == list(range(lo, hi + 1)):  # else the store lacks rows: assembly reports the shard as it is
                self._write(ids, values)
                rewritten += 1
        return rewritten

    def missing(self, n_rows: int) -> list[tuple[int, int]]:
        """Row ranges [start, stop) no shard covers: what a resumed run must still write."""
        gaps, expect = [], 0
        for lo, hi, _ in self.shards():
            if lo > expect:
                gaps.append((expect, min(lo, n_rows)))
            expect = max(expect, hi + 1)
        if expect < n_rows:
            gaps.append((expect, n_rows))
        return gaps

    def rows_written(self) -> int:
        return sum(hi - lo + 1 for lo, hi, _ in self.shards())

    def iter_labels(self, n_rows: int) -> Iterator[pd.DataFrame]:
        """The shards in row order, checked to cover 0..n_rows-1 exactly once."""
        expect = 0
        for lo, hi, path in self.shards():
            if lo != expect:
                kind = "overlap" if lo < expect else "gap"
                raise RuntimeError(f"labelled shards {kind} at row {min(lo, expect)} ({path.name})")
            frame = pq.read_table(path).to_pandas()
            if frame["row_id"].tolist() != list(range(lo, hi + 1)):
                raise RuntimeError(f"{path.name} does not hold rows {lo}..{hi} in order")
            expect = hi + 1
            yield frame
        if expect != n_rows:
            raise RuntimeError(f"labelled shards hold {expect} rows for {n_rows} inputs")

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for _, _, p in self.shards())


class _Labels:
    """Takes label rows from the shard stream in whatever sizes the input chunks come in."""

    def __init__(self, frames: Iterator[pd.DataFrame]):
        self._frames = frames
        self._buf: list[pd.DataFrame] = []
        self._have = 0

    def take(self, n: int) -> pd.DataFrame:
        while self._have < n:
            frame = next(self._frames, None)
            if frame is None:
                raise RuntimeError(f"labelled shards end {n - self._have} row(s) early")
            self._buf.append(frame)
            self._have += len(frame)
        joined = pd.concat(self._buf, ignore_index=True) if len(self._buf) > 1 else self._buf[0]
        out, rest = joined.iloc[:n].reset_index(drop=True), joined.iloc[n:].reset_index(drop=True)
        self._buf, self._have = ([rest] if len(rest) else []), len(rest)
        return out


class _FileSink:
    """One output file written chunk by chunk, in the format its name asks for."""

    def __init__(self, tmp: Path, ext: str, final_name: str):
        self.tmp, self.ext, self.final_name = tmp, ext, final_name
        self._text: io.TextIOBase | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._first = True

    def write(self, frame: pd.DataFrame) -> None:
        if self.ext == ".parquet":
            self._write_parquet(frame)
            return
        if self._text is None:
            self._text = open(self.tmp, "w", encoding="utf-8", newline="")  # type: ignore[assignment]
            if self.ext == ".json":
                self._text.write("[\n")
        fh = self._text
        if self.ext in (".csv", ".tsv"):
            frame.to_csv(fh, index=False, header=self._first, sep="\t" if self.ext == ".tsv" else ",",
                         lineterminator="\n")
        elif self.ext == ".json":
            buf = io.StringIO()
            _dump_records(frame, buf, as_list=False)
            lines = buf.getvalue().rstrip("\n").split("\n") if len(frame) else []
            if lines:
                fh.write(("" if self._first else ",\n") + ",\n".join(lines))
        else:
            _dump_records(frame, fh, as_list=False)
        self._first = False

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        try:
            if self._parquet is None:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                # A column that is all-null in the first chunk would fix its type as null; text is the safe guess.
                self._schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f
                                          for f in table.schema]).with_metadata(table.schema.metadata)
                table = table.cast(self._schema)
                self._parquet = pq.ParquetWriter(self.tmp, self._schema)
            else:
                table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
            self._parquet.write_table(table)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise UserError(f"cannot write {self.final_name} as Parquet ({_one_line(exc)}); "
                            f"choose a .jsonl or .csv output") from None

    def close(self) -> None:
        if self.ext == ".parquet":
            if self._parquet is not None:
                self._parquet.close()
            return
        if self._text is None:
            self._text = open(self.tmp, "w", encoding="utf-8", newline="")  # type: ignore[assignment]
            if self.ext == ".json":
                self._text.write("[\n")
        if self.ext == ".json":
            self._text.write("\n]\n")
        self._text.close()

    def abort(self) -> None:
        try:
            if self._text is not None:
                self._text.close()
            if self._parquet is not None:
                self._parquet.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def assemble(source: DataSource, writer: ShardWriter, out_path: str | Path,
             chunk_rows: int = FINISH_CHUNK_ROWS) -> list[str]:
    """Every input row, in order, with its labelled columns, streamed into ``out_path``; returns warnings.

    The input is re-read chunk by chunk and joined with the shards by position (checked against row ids), so
    memory holds one chunk, not the file. Written to a temporary name and renamed: a crash leaves the old
    file or the complete new one.
    """
    out_path = Path(out_path)
    ext = check_output_path(out_path, source.input_paths())
    renames, warnings = clash_renames(source.columns, writer.columns)
    labels = _Labels(writer.iter_labels(source.n_rows))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sink = _FileSink(_atomic(out_path), ext, out_path.name)
    written = 0
    try:
        for row_ids, frame in source.iter_frames(0, chunk_rows):
            lab = labels.take(len(row_ids))
            if lab["row_id"].tolist() != row_ids:
                raise RuntimeError(f"labelled shards do not line up with the input at row {row_ids[0]}")
            out = frame.rename(columns=renames)
            for name in writer.columns:
                col = lab[name]
                out[name] = col.where(col.notna(), None).tolist() if name != "uncertainty" else col.tolist()
            sink.write(out)
            written += len(row_ids)
        if written != source.n_rows:
            raise RuntimeError(f"the input gave {written} rows, the scan counted {source.n_rows}")
        sink.close()
        _fsync_replace(sink.tmp, out_path)
    except BaseException:
        sink.abort()
        raise
    return warnings


def label_columns(results: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The output columns of store result records (the run store's rows)."""
    return {
        "label": [r["label"] if r["label"] is not None else "" for r in results],
        "label_source": [str(r["label_source"]) for r in results],
        # P(label right) under the decision layer's posterior; empty for rows stored before it existed
        "confidence": [round(r["confidence"], 4) if r.get("confidence") is not None else None for r in results],
        "uncertainty": [r["uncertainty"] for r in results],
        "votes": [json.dumps(r["votes"], ensure_ascii=False) for r in results],
    }


def write_run_output(plan: RunPlan, dataset: Dataset, results: list[dict[str, Any]]) -> list[str]:
    """The labelled output file from the store's rows; returns the writer's warnings."""
    return write_labelled(dataset, label_columns(results), Path(plan.out_path))
