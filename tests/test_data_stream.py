"""Streaming input: shards (file, folder, glob), chunked reads, stable row ids, ragged rows, compressed files."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import tracemalloc
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from autoannotator.data import default_output_path, load_dataset, open_source
from autoannotator.errors import UserError


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def _shards(root: Path) -> list[str]:
    """Three shards of three formats, written so that path order != creation order; 10 + 7 + 5 rows."""
    root.mkdir()
    (root / "b").mkdir()
    pd.DataFrame({"text": [f"p{i}" for i in range(5)], "gold": ["pos"] * 5}).to_parquet(root / "b" / "c.parquet")
    (root / "a.jsonl").write_text("\n".join(json.dumps({"text": f"j{i}", "gold": "neg"}) for i in range(10)) + "\n")
    pd.DataFrame({"text": [f"c{i}" for i in range(7)], "gold": ["neu"] * 7}).to_csv(root / "b" / "a.csv", index=False)
    (root / ".hidden.csv").write_text("text\nnever\n")
    (root / "_SUCCESS").write_text("")
    return [f"j{i}" for i in range(10)] + [f"c{i}" for i in range(7)] + [f"p{i}" for i in range(5)]


def test_directory_of_shards_in_path_order(tmp_path):
    expected = _shards(tmp_path / "d")
    src = open_source(tmp_path / "d", "text", "gold")
    assert [s.path.name for s in src.shards] == ["a.jsonl", "a.csv", "c.parquet"]
    assert src.n_rows == 22 and [s.first_row for s in src.shards] == [0, 10, 17]
    chunks = list(src.iter_chunks(0, 4))
    assert [len(c.row_ids) for c in chunks] == [4, 4, 4, 4, 4, 2]  # chunks run across shard ends
    assert [t for c in chunks for t in c.texts] == expected
    assert [r for c in chunks for r in c.row_ids] == list(range(22))
    assert chunks[2].gold == ["neg", "neg", "neu", "neu"]


def test_chunks_from_a_start_row_match_a_full_read(tmp_path):
    expected = _shards(tmp_path / "d")
    src = open_source(tmp_path / "d", "text")
    for start in (0, 3, 9, 10, 16, 17, 21):
        got = list(src.iter_chunks(start, 3))
        assert [t for c in got for t in c.texts] == expected[start:]
        assert got[0].row_ids[0] == start
    assert list(src.iter_chunks(22, 3)) == []


def test_row_ids_stable_across_opens_and_fingerprint_tracks_content(tmp_path):
    _shards(tmp_path / "d")
    a, b = open_source(tmp_path / "d", "text"), open_source(tmp_path / "d", "text")
    assert a.fingerprint == b.fingerprint
    assert list(a.iter_chunks(0, 100)) == list(b.iter_chunks(0, 100))
    (tmp_path / "d" / "b" / "a.csv").write_text("text,gold\nchanged,neu\n")
    assert open_source(tmp_path / "d", "text").fingerprint != a.fingerprint


def test_glob_of_shards(tmp_path):
    for i in (2, 0, 1):
        (tmp_path / f"part-{i}.csv").write_text(f"text\nrow{i}a\nrow{i}b\n")
    (tmp_path / "other.jsonl").write_text('{"text": "no"}\n')
    src = open_source(str(tmp_path / "part-*.csv"), "text")
    assert [t for c in src.iter_chunks() for t in c.texts] == ["row0a", "row0b", "row1a", "row1b", "row2a", "row2b"]
    with pytest.raises(UserError) as e:
        open_source(str(tmp_path / "nothing-*.csv"), "text")
    assert "no data files match" in _one_line(e)


def test_single_file_fingerprint_is_sha256_of_its_bytes(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text\na\nb\n")
    assert open_source(p, "text").fingerprint == hashlib.sha256(p.read_bytes()).hexdigest()


def test_texts_for_given_rows(tmp_path):
    expected = _shards(tmp_path / "d")
    src = open_source(tmp_path / "d", "text")
    assert src.texts_for([21, 3, 10, 3], chunk_rows=4) == {3: expected[3], 10: expected[10], 21: expected[21]}
    with pytest.raises(IndexError):
        src.texts_for([22])


def test_shard_without_the_text_column_is_refused(tmp_path):
    (tmp_path / "a.csv").write_text("text\nx\n")
    (tmp_path / "b.csv").write_text("body\ny\n")
    with pytest.raises(UserError) as e:
        open_source(tmp_path, "text")
    assert "b.csv has no 'text' column" in _one_line(e)


# --- ragged rows: refused with every line number, never shifted --------------------------------

def test_ragged_rows_refused_with_all_their_lines(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"a, quoted",pos\nb,neg\nc,with, extra comma\nd\ne,pos\nf,neg,x\n')
    with pytest.raises(UserError) as e:
        open_source(p, "text")
    msg = _one_line(e)
    assert "3 row(s)" in msg and "line 4, 5, 7" in msg and "2 fields" in msg


def test_ragged_row_in_a_multiline_quoted_file_names_its_first_line(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"two\nlines",pos\nx,y,z\n')
    with pytest.raises(UserError) as e:
        load_dataset(p, "text")
    assert "line 4" in _one_line(e)


def test_many_ragged_rows_are_summarised(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "".join(f"t{i},a,b\n" for i in range(25)))
    with pytest.raises(UserError) as e:
        open_source(p, "text")
    msg = _one_line(e)
    assert "25 row(s)" in msg and "and 15 more" in msg


def test_nul_bytes_refused(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"text,x\nab\x00cd,1\n")
    with pytest.raises(UserError) as e:
        open_source(p, "text")
    assert "NUL" in _one_line(e)


# --- compressed input, told by content ---------------------------------------------------------

_CSV = b"text,gold\ncaf\xc3\xa9,pos\nplain,neg\n"


def _zstd(data: bytes) -> bytes:
    return pa.Codec("zstd").compress(data, asbytes=True)


@pytest.mark.parametrize("name,pack", [("gz_named.csv", gzip.compress), ("d.csv.gz", gzip.compress),
                                       ("bz.csv", bz2.compress), ("d.csv.xz", lzma.compress),
                                       ("zs.csv", _zstd), ("d.csv.zst", _zstd)])
def test_compressed_csv_read_by_content(tmp_path, name, pack):
    p = tmp_path / name
    p.write_bytes(pack(_CSV))
    ds = load_dataset(p, "text", gold_column="gold")
    assert ds.texts == ["café", "plain"] and ds.gold == ["pos", "neg"]
    assert ds.fingerprint == hashlib.sha256(p.read_bytes()).hexdigest()  # of the bytes on disk
    assert ds.warnings == []


def test_gzip_jsonl_and_folder_of_gzip_shards(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "one"}\n{"text": "two"}\n'))
    (tmp_path / "s" / "b.jsonl").write_bytes(gzip.compress(b'{"text": "three"}\n'))  # gzip under a plain name
    assert [t for c in open_source(tmp_path / "s", "text").iter_chunks() for t in c.texts] == ["one", "two", "three"]


def test_zip_and_misnamed_parquet_refused(tmp_path):
    z = tmp_path / "d.csv"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("d.csv", "text\na\n")
    with pytest.raises(UserError) as e:
        open_source(z, "text")
    assert "zip archive" in _one_line(e)
    pq_named_csv = tmp_path / "p.csv"
    pd.DataFrame({"text": ["a"]}).to_parquet(pq_named_csv)
    with pytest.raises(UserError) as e:
        open_source(pq_named_csv, "text")
    assert "name it .parquet" in _one_line(e)


def test_truncated_gzip_is_a_user_error(tmp_path):
    p = tmp_path / "d.csv"
    body = "".join(f"row {i} {hashlib.sha256(str(i).encode()).hexdigest()}\n" for i in range(2000))
    p.write_bytes(gzip.compress(("text\n" + body).encode())[:5000])
    with pytest.raises(UserError) as e:
        open_source(p, "text")
    assert "d.csv" in _one_line(e)


def test_default_output_of_compressed_and_folder_inputs(tmp_path):
    assert default_output_path("x/d.csv.gz", tmp_path) == tmp_path / "d.labelled.csv"
    assert default_output_path("x/shards", tmp_path, ".parquet") == tmp_path / "shards.labelled.parquet"


# --- bounded memory ----------------------------------------------------------------------------

def _peak_bytes(path: Path, n_rows: int) -> int:
    row = '"' + "a review of some length; long enough to weigh something in memory, row {i} " * 4 + '",pos\n'
    with open(path, "w") as fh:
        fh.write("text,gold\n")
        for i in range(n_rows):
            fh.write(row.format(i=i))
    tracemalloc.start()
    try:
        src = open_source(path, "text", "gold")
        n = sum(len(c.texts) for c in src.iter_chunks(0, 1_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == src.n_rows == n_rows
    return peak


def test_scan_and_chunked_read_hold_a_chunk_not_the_file(tmp_path):
    small, big = _peak_bytes(tmp_path / "small.csv", 5_000), _peak_bytes(tmp_path / "big.csv", 25_000)
    size = (tmp_path / "big.csv").stat().st_size
    # 5x the rows: the peak may grow by the 8-byte-a-row duplicate check, not by the texts
    assert big < small + 25_000 * 8 * 3, (small, big)
    assert big < size / 4, (big, size)


def test_row_texts_walks_in_order_with_one_reader(tmp_path):
    from autoannotator.data import EmptyRows, RowTexts

    expected = _shards(tmp_path / "d")
    src = open_source(tmp_path / "d", "text")
    text_of = RowTexts(src, window_rows=4, wanted=lambda: [0, 2, 3])
    assert [text_of(i) for i in range(22)] == expected
    assert text_of.passes == 1  # one reader for the whole walk
    assert text_of(17) == expected[17] and text_of.passes == 1  # the window before stays at hand
    assert text_of(2) == expected[2]  # further behind: one pass fetches every wanted row
    assert text_of(0) == expected[0] and text_of(3) == expected[3] and text_of.passes == 2
    resumed = RowTexts(src, window_rows=4)
    assert resumed(13) == expected[13] and resumed(14) == expected[14] and resumed.passes == 1
    p = tmp_path / "e.csv"
    p.write_text("text,x\na,1\n,2\n  ,3\nb,4\n")
    empty = EmptyRows(RowTexts(open_source(p, "text")))
    assert [i for i in range(4) if i in empty] == [1, 2]
