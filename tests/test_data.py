"""Data loading/writing: every bad-input case is a one-line UserError or a handled warning, never a lost row."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from autoannotator.data import default_output_path, load_dataset, write_labelled
from autoannotator.errors import UserError


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def _new_columns(n: int) -> dict[str, list]:
    return {"label": ["pos"] * n, "label_source": ["ensemble"] * n, "uncertainty": [0.25] * n,
            "votes": [json.dumps({"vader": "pos"})] * n}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_csv_basic_and_fingerprint(tmp_path):
    p = _write(tmp_path / "d.csv", "id,text,extra\n1,hello,a\n2,world,b\n")
    ds = load_dataset(p, "text")
    assert ds.texts == ["hello", "world"]
    assert ds.row_ids == [0, 1]
    assert list(ds.frame.columns) == ["id", "text", "extra"]
    assert ds.frame["id"].tolist() == ["1", "2"]  # read as-is, not as ints
    assert ds.fingerprint == hashlib.sha256(p.read_bytes()).hexdigest()
    assert ds.warnings == []


def test_na_and_null_texts_survive(tmp_path):
    p = _write(tmp_path / "d.csv", "text,n\nNA,1\nnull,2\nNone,3\n")
    ds = load_dataset(p, "text")
    assert ds.texts == ["NA", "null", "None"]
    out = tmp_path / "out.csv"
    write_labelled(ds, _new_columns(3), out)
    back = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert back["text"].tolist() == ["NA", "null", "None"]


def test_tsv(tmp_path):
    p = _write(tmp_path / "d.tsv", "text\tlabel_gold\na, b\tx\nc\ty\n")
    ds = load_dataset(p, "text", gold_column="label_gold")
    assert ds.texts == ["a, b", "c"]
    assert ds.gold == ["x", "y"]


def test_missing_file(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset(tmp_path / "nope.csv", "text")
    assert "not found" in _one_line(e)


def test_unknown_extension_lists_supported(tmp_path):
    p = _write(tmp_path / "d.xlsx", "x")
    with pytest.raises(UserError) as e:
        load_dataset(p, "text")
    msg = _one_line(e)
    assert ".csv" in msg and ".jsonl" in msg and ".parquet" in msg


@pytest.mark.parametrize("name,content", [("e.csv", ""), ("h.csv", "text,label\n"), ("h.tsv", "text\n"),
                                          ("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.json", "")])
def test_no_rows(tmp_path, name, content):
    p = _write(tmp_path / name, content)
    with pytest.raises(UserError) as e:
        load_dataset(p, "text")
    assert "no rows" in _one_line(e)


def test_missing_text_column_lists_available(tmp_path):
    p = _write(tmp_path / "d.csv", "review,stars\ngood,5\n")
    with pytest.raises(UserError) as e:
        load_dataset(p, "text")
    msg = _one_line(e)
    assert "'review'" in msg and "'stars'" in msg and "--text-column" in msg


def test_auto_pick_text_column(tmp_path):
    p = _write(tmp_path / "d.csv", "id,review,stars\n1,a rather long review,5\n2,another long one,4\n")
    ds = load_dataset(p, None)
    assert ds.text_column == "review"
    assert any("'review'" in w for w in ds.warnings)
    p2 = _write(tmp_path / "t.csv", "body,text\nlong long long long,short\n")
    assert load_dataset(p2, None).text_column == "text"


def test_auto_pick_ignores_non_string_columns(tmp_path):
    p = _write(tmp_path / "d.jsonl", '{"n": 123456789, "t": "hi"}\n{"n": 5, "t": "yo"}\n')
    assert load_dataset(p, None).text_column == "t"


def test_latin1_bytes_replaced_and_counted(tmp_path):
    p = _write(tmp_path / "d.csv", "text\ncaf\xe9\nplain\nna\xefve\n".encode("latin-1"))
    ds = load_dataset(p, "text")
    assert len(ds) == 3
    assert ds.texts[0] == "caf\ufffd" and ds.texts[1] == "plain"
    assert any("UTF-8" in w and "2 row" in w for w in ds.warnings)


def test_bom_stripped(tmp_path):
    p = _write(tmp_path / "d.csv", b"\xef\xbb\xbftext,x\nhi,1\n")
    ds = load_dataset(p, "text")
    assert list(ds.frame.columns) == ["text", "x"]
    assert ds.warnings == []


def test_utf16_excel_export(tmp_path):
    p = _write(tmp_path / "d.tsv", "text\tx\ncafé\t1\n".encode("utf-16"))
    assert load_dataset(p, "text").texts == ["café"]


def test_malformed_csv_names_line(tmp_path):
    p = _write(tmp_path / "d.csv", "text,x\na,1\nb,2\nc,3,extra\n")
    with pytest.raises(UserError) as e:
        load_dataset(p, "text")
    assert "line 4" in _one_line(e)


def test_unterminated_quote_is_user_error(tmp_path):
    p = _write(tmp_path / "d.csv", 'text,x\na,1\n"b,2\n')
    with pytest.raises(UserError) as e:
        load_dataset(p, "text")
    assert "malformed CSV at line 3" in _one_line(e)


def test_malformed_jsonl_names_line(tmp_path):
    p = _write(tmp_path / "d.jsonl", '{"text": "a"}\n\n{"text": "b"\n')
    with pytest.raises(UserError) as e:
        load_dataset(p, "text")
    assert "line 3" in _one_line(e)


def test_jsonl_non_object_line(tmp_path):
    p = _write(tmp_path / "d.jsonl", '{"text": "a"}\n["b"]\n')
    with pytest.raises(UserError) as e:
        load_dataset(p, "text")
    assert "line 2" in _one_line(e)


def test_json_that_is_jsonl_gets_hint(tmp_path):
    p = _write(tmp_path / "d.json", '{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(UserError) as e:
        load_dataset(p, "text")
    assert ".jsonl" in _one_line(e)


def test_json_not_a_list(tmp_path):
    p = _write(tmp_path / "d.json", '{"text": "a"}')
    with pytest.raises(UserError) as e:
        load_dataset(p, "text")
    assert "list" in _one_line(e)


def test_long_text_truncated_for_models_only(tmp_path):
    big = "x" * 1_000_000
    p = _write(tmp_path / "d.csv", f"text\n{big}\nshort\n")
    ds = load_dataset(p, "text", max_text_chars=20000)
    assert len(ds.texts[0]) == 20000 and ds.texts[1] == "short"
    assert ds.truncated_rows == [0]
    assert any("1 row(s) longer than 20000" in w for w in ds.warnings)
    out = tmp_path / "o.csv"
    write_labelled(ds, _new_columns(2), out)
    assert pd.read_csv(out, dtype=str)["text"][0] == big


def test_empty_texts_kept(tmp_path):
    p = _write(tmp_path / "d.csv", 'text,x\nhi,1\n,2\n   ,3\n')
    ds = load_dataset(p, "text")
    assert len(ds) == 3 and ds.empty_rows == [1, 2]
    assert any("empty" in w for w in ds.warnings)


def test_single_column_blank_line_is_a_row(tmp_path):
    p = _write(tmp_path / "d.csv", "text\na\n\nb\n\n")
    ds = load_dataset(p, "text")
    assert ds.texts == ["a", "", "b", ""] and ds.empty_rows == [1, 3]


def test_multi_column_blank_lines_skipped(tmp_path):
    assert load_dataset(_write(tmp_path / "d.csv", "text,x\na,1\n\nb,2\n"), "text").texts == ["a", "b"]


def test_missing_cells_become_empty_text(tmp_path):
    p = _write(tmp_path / "d.jsonl", '{"text": "a", "k": 1}\n{"k": 2}\n{"text": null}\n')
    ds = load_dataset(p, "text")
    assert ds.texts == ["a", "", ""] and ds.empty_rows == [1, 2]


def test_duplicates_kept_and_counted(tmp_path):
    p = _write(tmp_path / "d.csv", "text\nsame\nsame\nother\nsame\n")
    ds = load_dataset(p, "text")
    assert len(ds) == 4
    assert any(w.startswith("2 row(s) repeat") for w in ds.warnings)


def test_gold_missing_and_stripped(tmp_path):
    p = _write(tmp_path / "d.csv", "text,gold\na, pos \nb,\nc,neg\n")
    ds = load_dataset(p, "text", gold_column="gold")
    assert ds.gold == ["pos", None, "neg"]
    with pytest.raises(UserError) as e:
        load_dataset(p, "text", gold_column="truth")
    msg = _one_line(e)
    assert "truth" in msg and "'gold'" in msg


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_round_trip_every_format(tmp_path, ext):
    src = pd.DataFrame({"id": ["1", "2", "3"], "text": ["a, \"quoted\"\nline", "ünïcode ✓", "NA"]})
    p = tmp_path / f"in{ext}"
    if ext == ".parquet":
        src.to_parquet(p, index=False)
    elif ext in (".csv", ".tsv"):
        src.to_csv(p, index=False, sep="\t" if ext == ".tsv" else ",")
    else:
        recs = src.to_dict(orient="records")
        p.write_text(json.dumps(recs) if ext == ".json" else "\n".join(map(json.dumps, recs)), encoding="utf-8")
    ds = load_dataset(p, "text")
    assert ds.texts == src["text"].tolist()
    out = default_output_path(p, tmp_path / "run")
    assert out == tmp_path / "run" / f"in.labelled{ext}"
    assert write_labelled(ds, _new_columns(3), out) == []
    back = load_dataset(out, "text")
    assert list(back.frame.columns) == ["id", "text", "label", "label_source", "uncertainty", "votes"]
    assert back.texts == src["text"].tolist()
    assert [str(x) for x in back.frame["id"]] == ["1", "2", "3"]
    assert json.loads(back.frame["votes"][0]) == {"vader": "pos"}
    assert float(back.frame["uncertainty"][2]) == 0.25


def test_json_values_written_as_is(tmp_path):
    p = _write(tmp_path / "d.jsonl", '{"text": "a", "score": 0.123456789012345, "meta": {"k": [1, 2]}}\n'
                                     '{"text": "b"}\n')
    ds = load_dataset(p, "text")
    out = tmp_path / "o.jsonl"
    write_labelled(ds, _new_columns(2), out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["score"] == 0.123456789012345 and rows[0]["meta"] == {"k": [1, 2]}
    assert rows[1]["score"] is None and rows[1]["label"] == "pos"


def test_parquet_typed_columns_survive(tmp_path):
    p = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b"], "n": [1, 2], "f": [0.5, None]}).to_parquet(p, index=False)
    ds = load_dataset(p, "text")
    out = tmp_path / "o.parquet"
    write_labelled(ds, _new_columns(2), out)
    back = pd.read_parquet(out)
    assert back["n"].tolist() == [1, 2] and back["label"].tolist() == ["pos", "pos"]


def test_write_preserves_row_count_and_order(tmp_path):
    texts = [f"t{i}" for i in range(50)] + ["dup", "dup", ""]
    p = tmp_path / "d.csv"
    pd.DataFrame({"text": texts}).to_csv(p, index=False)
    ds = load_dataset(p, "text")
    assert len(ds) == len(texts)
    out = tmp_path / "o.csv"
    write_labelled(ds, {"label": [f"L{i}" for i in ds.row_ids]}, out)
    back = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(back) == len(texts) and back["text"].tolist() == texts
    assert back["label"].tolist() == [f"L{i}" for i in range(len(texts))]


def test_length_mismatch_refused_and_nothing_written(tmp_path):
    ds = load_dataset(_write(tmp_path / "d.csv", "text\na\nb\nc\n"), "text")
    out = tmp_path / "run" / "o.csv"
    with pytest.raises(UserError) as e:
        write_labelled(ds, {"label": ["x", "y"]}, out)
    assert "2 values for 3" in _one_line(e)
    assert not out.exists()


def test_name_clash_renames_the_input_column(tmp_path):
    ds = load_dataset(_write(tmp_path / "d.csv", "text,label,input_label\na,gold1,q\nb,gold2,r\n"), "text")
    out = tmp_path / "o.csv"
    warnings = write_labelled(ds, {"label": ["x", "y"], "votes": ["{}", "{}"]}, out)
    back = pd.read_csv(out, dtype=str)
    assert back["label"].tolist() == ["x", "y"] and back["input_input_label"].tolist() == ["gold1", "gold2"]
    assert back["input_label"].tolist() == ["q", "r"]
    assert list(back.columns) == ["text", "input_input_label", "input_label", "label", "votes"]
    assert len(warnings) == 1 and "input_input_label" in warnings[0]


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    ds = load_dataset(_write(tmp_path / "d.csv", "text\na\nb\n"), "text")
    run = tmp_path / "run"
    out = run / "o.csv"
    write_labelled(ds, {"label": ["x", "y"]}, out)
    assert sorted(f.name for f in run.iterdir()) == ["o.csv"]
    before = out.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(OSError):
        write_labelled(ds, {"label": ["p", "q"]}, out)
    assert sorted(f.name for f in run.iterdir()) == ["o.csv"]
    assert out.read_bytes() == before  # the previous complete file is untouched


def test_refuses_to_overwrite_input(tmp_path):
    p = _write(tmp_path / "d.csv", "text\na\n")
    ds = load_dataset(p, "text")
    with pytest.raises(UserError):
        write_labelled(ds, {"label": ["x"]}, p)
    assert p.read_text() == "text\na\n"


def test_unsupported_output_extension(tmp_path):
    ds = load_dataset(_write(tmp_path / "d.csv", "text\na\n"), "text")
    with pytest.raises(UserError) as e:
        write_labelled(ds, {"label": ["x"]}, tmp_path / "o.xlsx")
    assert ".parquet" in _one_line(e)


def test_row_of_empty_cells_is_kept(tmp_path):
    ds = load_dataset(_write(tmp_path / "d.csv", "text,x\na,1\n,\n\nb,2\n"), "text")
    assert ds.texts == ["a", "", "b"] and ds.empty_rows == [1]


def test_jsonl_with_line_separator_chars_round_trips(tmp_path):
    texts = ["a\u2028b", "c\u0085d\re", "f"]
    p = _write(tmp_path / "d.jsonl", "\r\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts))
    ds = load_dataset(p, "text")
    assert ds.texts == texts
    out = tmp_path / "o.jsonl"
    write_labelled(ds, {"label": ["x"] * 3}, out)
    assert load_dataset(out, "text").texts == texts


def test_output_file_is_not_private(tmp_path):
    ds = load_dataset(_write(tmp_path / "d.csv", "text\na\n"), "text")
    out = tmp_path / "o.csv"
    write_labelled(ds, {"label": ["x"]}, out)
    ref = tmp_path / "ref"
    ref.write_text("x")  # the mode any ordinary new file gets under this umask (mkstemp would force 0600)
    assert out.stat().st_mode & 0o777 == ref.stat().st_mode & 0o777
