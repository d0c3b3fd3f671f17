"""Item 7 (the reader belongs to helper "scale"): bad input files. A ragged CSV row is refused with its
line number, or kept whole with a warning, never silently shifted; a gzip file named .csv is read by
its content or refused, never labelled as binary garbage. Either way: one clear line, no LLM call."""

from __future__ import annotations

import csv
import gzip
import json

import pytest
from harness import LABELS, cli_inprocess, one_line_error, output_rows, write_data


def _args(data, run_dir, endpoint):
    return ["label", str(data), "--task", "sentiment", "--labels", LABELS, "--models", "vader,textblob,afinn",
            "--sandbox", "none", "--batch-size", "8", "--llm-base-url", endpoint.base_url,
            "--llm-model", endpoint.model, "--run-dir", str(run_dir), "-q"]


def test_ragged_csv_row_is_refused_or_kept_whole(tmp_path, endpoint, monkeypatch):
    data = tmp_path / "ragged.csv"
    data.write_text("text,gold\ngreat film,positive\nawful, really awful,negative\nfine,neutral\n", encoding="utf-8")
    code, err = cli_inprocess(_args(data, tmp_path / "run", endpoint), monkeypatch)
    if code == 2:  # refused: the message names the line
        line = one_line_error(err)
        assert "3" in line and ("line" in line or "row" in line), line
        assert endpoint.log == []
        return
    assert code == 0, err
    rows = output_rows(tmp_path / "run")
    ragged = [r for r in rows if "awful" in (r.get("text") or "")]
    assert ragged and "really awful" in ragged[0]["text"], "a field of the ragged row was dropped or shifted"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert any("3" in w for w in report["warnings"]), "kept whole, but no warning names the line"


def test_gzip_named_csv_is_read_by_content_or_refused(tmp_path, endpoint, monkeypatch):
    plain = write_data(tmp_path / "plain.csv", 8)
    data = tmp_path / "packed.csv"
    data.write_bytes(gzip.compress(plain.read_bytes()))
    code, err = cli_inprocess(_args(data, tmp_path / "run", endpoint), monkeypatch)
    if code == 2:
        assert "gzip" in one_line_error(err).lower() or "compress" in one_line_error(err).lower()
        assert endpoint.log == []
        return
    assert code == 0, err
    with open(plain, encoding="utf-8") as f:
        expected = [r["text"] for r in csv.DictReader(f)]
    assert [r["text"] for r in output_rows(tmp_path / "run")] == expected
