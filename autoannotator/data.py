"""Reading the user's data file and writing it back with labels, without ever losing or reordering a row."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from autoannotator.errors import UserError

SUPPORTED = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet")
_SUPPORTED_TEXT = ", ".join(SUPPORTED)


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


def _decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 (a BOM stripped), or UTF-16 told by its BOM (Excel's "Unicode text"); bad bytes never fatal."""
    codec = "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        return raw.decode(codec), False
    except UnicodeDecodeError:
        return raw.decode(codec, errors="replace"), True


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def _read_csv(text: str, sep: str, name: str) -> pd.DataFrame:
    # dtype=str + no NA parsing: "NA", "null", "0012" stay exactly what the user wrote.
    opts: dict[str, Any] = dict(sep=sep, dtype=str, keep_default_na=False, na_filter=False, index_col=False)
    try:
        header = pd.read_csv(io.StringIO(text), nrows=0, **opts)
        # A blank line is no row when there are several columns (",," is one, and is kept); in a one-column
        # file it is an empty text: pandas itself writes an empty last cell as a bare blank line.
        return pd.read_csv(io.StringIO(text), skip_blank_lines=len(header.columns) > 1, **opts)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, ValueError) as exc:
        detail = _one_line(exc).split("C error: ")[-1]
        where = ""
        if m := re.search(r"starting at row (\d+)", detail):  # pandas counts these rows from 0, header included
            where, detail = f" at line {int(m.group(1)) + 1}", 'a quoted field is never closed (unbalanced ")'
        elif m := re.search(r"in line (\d+)", detail):
            where = f" at line {m.group(1)}"
        raise UserError(f"{name}: malformed {'TSV' if sep == chr(9) else 'CSV'}{where}: {detail}") from None


def _records_frame(records: list[Any], name: str, line_of: list[int] | None = None) -> pd.DataFrame:
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            where = f"line {line_of[i]}" if line_of else f"item {i + 1}"
            raise UserError(f"{name}: {where} is a JSON {type(rec).__name__}, expected an object like {{\"text\": ...}}")
    # dtype=object keeps each value exactly as parsed (no int->float coercion when a key is missing somewhere).
    return pd.DataFrame(records, dtype=object)


def _read_frame(path: Path, raw: bytes) -> tuple[pd.DataFrame, bool]:
    ext, name = path.suffix.lower(), path.name
    if ext == ".parquet":
        try:
            frame = pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:  # pyarrow raises many types; all mean "not a readable parquet file"
            raise UserError(f"{name}: not a readable Parquet file ({_one_line(exc)})") from None
        if not isinstance(frame.index, pd.RangeIndex):  # a stored index is user data: keep it as a column
            frame = frame.reset_index()
        return frame.reset_index(drop=True), False
    text, lossy = _decode(raw)
    if ext in (".csv", ".tsv"):
        return _read_csv(text, "\t" if ext == ".tsv" else ",", name), lossy
    if ext in (".jsonl", ".ndjson"):
        records, lines = [], []
        # split("\n"), not splitlines(): U+2028 and friends are legal raw inside a JSON string.
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{name}: malformed JSON at line {lineno}: {exc.msg} (column {exc.colno})") from None
            lines.append(lineno)
        return _records_frame(records, name, lines), lossy
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        hint = "; if it holds one object per line, name it .jsonl" if exc.msg == "Extra data" else ""
        raise UserError(f"{name}: malformed JSON at line {exc.lineno}: {exc.msg}{hint}") from None
    if not isinstance(data, list):
        raise UserError(f"{name}: expected a JSON list of objects, got a {type(data).__name__}")
    return _records_frame(data, name), lossy


def _pick_text_column(frame: pd.DataFrame, name: str, warnings: list[str]) -> str:
    if "text" in frame.columns:
        return "text"
    averages: dict[str, float] = {}
    for col in frame.columns:
        values = [v for v in frame[col].tolist() if not _is_missing(v)]
        if values and all(isinstance(v, str) for v in values):
            averages[str(col)] = sum(map(len, values)) / len(values)
    if not averages:
        raise UserError(f"{name}: no column holds text; available columns: {_columns(frame)}. Use --text-column NAME")
    chosen = max(averages, key=lambda c: averages[c])  # max keeps the first of equal averages
    warnings.append(f"no --text-column given and no 'text' column: using '{chosen}' (longest average text, "
                    f"{averages[chosen]:.0f} chars); pass --text-column to choose another")
    return chosen


def _columns(frame: pd.DataFrame) -> str:
    return ", ".join(repr(str(c)) for c in frame.columns) or "(none)"


def load_dataset(path: str | Path, text_column: str | None, gold_column: str | None = None,
                 max_text_chars: int = 20000) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}" if not path.exists() else f"not a file: {path}")
    if path.suffix.lower() not in SUPPORTED:
        raise UserError(f"unsupported data file type '{path.suffix or path.name}'; supported: {_SUPPORTED_TEXT}")
    raw = path.read_bytes()
    frame, lossy = _read_frame(path, raw)
    if len(frame) == 0:
        raise UserError(f"{path.name} has no rows (the file is empty or holds only a header)")
    warnings: list[str] = []
    if text_column is None:
        text_column = _pick_text_column(frame, path.name, warnings)
    elif text_column not in frame.columns:
        raise UserError(f"text column '{text_column}' not found in {path.name}; available columns: "
                        f"{_columns(frame)}. Pass --text-column NAME")
    n = len(frame)
    if lossy:
        bad = sum(any(isinstance(v, str) and "\ufffd" in v for v in row) for row in frame.itertuples(index=False))
        warnings.append(f"{path.name} is not valid UTF-8: undecodable bytes in {bad} row(s) were replaced "
                        f"with U+FFFD; re-save the file as UTF-8 to keep them")
    full = [_cell_text(v) for v in frame[text_column].tolist()]
    # Models get a bounded prompt; the frame (and so the output file) keeps the full cell.
    truncated = [i for i, t in enumerate(full) if len(t) > max_text_chars]
    texts = [t[:max_text_chars] for t in full]
    if truncated:
        warnings.append(f"{len(truncated)} row(s) longer than {max_text_chars} characters: the models see the "
                        f"first {max_text_chars}, the output keeps the full text")
    empty = [i for i, t in enumerate(full) if not t.strip()]
    if empty:
        warnings.append(f"{len(empty)} row(s) have an empty text (kept in the output; first row ids: {empty[:5]})")
    dupes = n - len(set(full))
    if dupes:
        warnings.append(f"{dupes} row(s) repeat the text of an earlier row (kept; each row is labelled on its own)")
    gold = None
    if gold_column is not None:
        if gold_column not in frame.columns:
            raise UserError(f"gold column '{gold_column}' not found in {path.name}; available columns: "
                            f"{_columns(frame)}. Pass --gold-column NAME")
        gold = [(_cell_text(v).strip() or None) for v in frame[gold_column].tolist()]
    return Dataset(path=path, frame=frame, text_column=text_column, texts=texts, row_ids=list(range(n)),
                   fingerprint=hashlib.sha256(raw).hexdigest(), gold_column=gold_column, gold=gold,
                   empty_rows=empty, truncated_rows=truncated, warnings=warnings)


def default_output_path(data_path: str | Path, run_dir: str | Path) -> Path:
    data_path = Path(data_path)
    return Path(run_dir) / f"{data_path.stem}.labelled{data_path.suffix}"


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


def write_labelled(dataset: Dataset, columns: dict[str, Sequence[Any]], out_path: str | Path) -> list[str]:
    """Write every input row, in order, plus `columns`; returns warnings. Refuses rather than drop rows."""
    out_path = Path(out_path)
    ext = out_path.suffix.lower()
    if ext not in SUPPORTED:
        raise UserError(f"unsupported output file type '{out_path.suffix or out_path.name}'; supported: {_SUPPORTED_TEXT}")
    if out_path.resolve() == dataset.path.resolve():
        raise UserError(f"refusing to overwrite the input file {out_path}; choose another output path")
    n = len(dataset.frame)
    for name, values in columns.items():
        if len(values) != n:
            raise UserError(f"refusing to write {out_path.name}: column '{name}' has {len(values)} values "
                            f"for {n} input rows (the output must keep every row)")
    out = dataset.frame.copy(deep=False)
    warnings: list[str] = []
    # The new columns keep their documented names; a clashing input column is renamed, never dropped,
    # so `label` in the output is always autoannotator's label.
    renames: dict[str, str] = {}
    for name in columns:
        if name in out.columns:
            final = f"input_{name}"
            while final in out.columns or final in columns or final in renames.values():
                final = f"input_{final}"
            renames[name] = final
            warnings.append(f"the input's own '{name}' column is written as '{final}' (the output's '{name}' "
                            f"is autoannotator's)")
    out = out.rename(columns=renames)
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
