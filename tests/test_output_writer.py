"""The labelled output written as the run goes: shards per chunk, one file assembled at the end, every row once."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from autoannotator.data import load_dataset, open_source
from autoannotator.errors import UserError
from autoannotator.run.output import ShardWriter, assemble


def _labels(ids: list[int], tag: str = "L") -> dict[str, list]:
    return {"label": [f"{tag}{i}" for i in ids], "label_source": ["slm_consensus"] * len(ids),
            "confidence": [0.5 + i / 1000 for i in ids],
            "uncertainty": [None if i % 5 == 0 else i / 100 for i in ids],
            "votes": [json.dumps({"vader": {"label": f"{tag}{i}", "p": 0.5}}) for i in ids]}


def _source(tmp_path: Path, n: int = 23):
    p = tmp_path / "in.csv"
    pd.DataFrame({"id": [str(i) for i in range(n)], "text": [f"t{i}, \"q\"\nx" for i in range(n)],
                  "label": ["gold"] * n}).to_csv(p, index=False)
    return open_source(p, "text"), n


def _write_chunks(writer: ShardWriter, n: int, size: int, order=None) -> None:
    starts = list(range(0, n, size))
    for start in (order(starts) if order else starts):
        ids = list(range(start, min(start + size, n)))
        writer.append(ids, _labels(ids))


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_every_row_once_in_order_in_every_format(tmp_path, ext):
    source, n = _source(tmp_path)
    writer = ShardWriter(tmp_path / "run" / "labelled")
    _write_chunks(writer, n, 5, order=lambda s: s[::-1])  # chunks finish out of order
    out = tmp_path / "run" / f"out{ext}"
    warnings = assemble(source, writer, out, chunk_rows=4)  # input chunks cut differently from the shards
    back = load_dataset(out, "text")
    assert len(back) == n
    assert [str(x) for x in back.frame["id"]] == [str(i) for i in range(n)]
    assert back.texts == [f"t{i}, \"q\"\nx" for i in range(n)]
    assert back.frame["label"].tolist() == [f"L{i}" for i in range(n)]
    assert back.frame["input_label"].tolist() == ["gold"] * n  # the input's own 'label' is kept, renamed
    assert any("input_label" in w for w in warnings)
    assert json.loads(back.frame["votes"][7]) == {"vader": {"label": "L7", "p": 0.5}}
    unc = back.frame["uncertainty"].tolist()
    assert pd.isna(unc[0]) or unc[0] in ("", None)
    assert float(unc[7]) == 0.07
    assert sorted(p.name for p in out.parent.iterdir()) == ["labelled", f"out{ext}"]  # no temp file left


def test_same_as_the_whole_frame_writer(tmp_path):
    from autoannotator.data import write_labelled

    source, n = _source(tmp_path)
    writer = ShardWriter(tmp_path / "shards")
    _write_chunks(writer, n, 7)
    assemble(source, writer, tmp_path / "streamed.csv", chunk_rows=3)
    write_labelled(load_dataset(source.path, "text"), _labels(list(range(n))), tmp_path / "whole.csv")
    assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_rewritten_chunk_replaces_its_shard(tmp_path):
    source, n = _source(tmp_path, 10)
    writer = ShardWriter(tmp_path / "s")
    _write_chunks(writer, n, 5)
    writer.append(list(range(5, 10)), _labels(list(range(5, 10)), tag="R"))  # the chunk re-ran after a crash
    assert len(writer.shards()) == 2 and writer.rows_written() == 10
    assemble(source, writer, tmp_path / "o.jsonl")
    labels = [json.loads(line)["label"] for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert labels == [f"L{i}" for i in range(5)] + [f"R{i}" for i in range(5, 10)]


def test_a_bigger_chunk_supersedes_the_shards_it_covers(tmp_path):
    writer = ShardWriter(tmp_path / "s")
    _write_chunks(writer, 10, 2)
    writer.append(list(range(0, 6)), _labels(list(range(0, 6))))
    assert [(lo, hi) for lo, hi, _ in writer.shards()] == [(0, 5), (6, 7), (8, 9)]
    with pytest.raises(ValueError):  # would drop rows 6..7 of an existing shard without rewriting them
        writer.append([5, 6], _labels([5, 6]))


def test_gap_is_reported_and_assembly_refuses(tmp_path):
    source, n = _source(tmp_path, 12)
    writer = ShardWriter(tmp_path / "s")
    for start in (0, 8):
        ids = list(range(start, start + 4))
        writer.append(ids, _labels(ids))
    assert writer.missing(n) == [(4, 8)]
    with pytest.raises(RuntimeError, match="gap at row 4"):
        assemble(source, writer, tmp_path / "o.csv")
    assert not (tmp_path / "o.csv").exists()


def test_short_shards_refused(tmp_path):
    source, n = _source(tmp_path, 12)
    writer = ShardWriter(tmp_path / "s")
    _write_chunks(writer, 8, 4)
    assert writer.missing(n) == [(8, 12)]
    with pytest.raises(RuntimeError):
        assemble(source, writer, tmp_path / "o.parquet")


def test_bad_chunks_refused(tmp_path):
    writer = ShardWriter(tmp_path / "s")
    with pytest.raises(ValueError):
        writer.append([0, 2], _labels([0, 2]))
    with pytest.raises(ValueError):
        writer.append([0, 1], {"label": ["a"]})


def test_output_over_an_input_shard_refused(tmp_path):
    source, n = _source(tmp_path, 3)
    writer = ShardWriter(tmp_path / "s")
    _write_chunks(writer, n, 3)
    with pytest.raises(UserError):
        assemble(source, writer, source.path)
    assert source.path.read_text().startswith("id,text,label")


def test_parquet_output_of_typed_shards(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(3):
        pd.DataFrame({"text": [f"r{i}{j}" for j in range(4)], "n": [i * 10 + j for j in range(4)]}).to_parquet(
            tmp_path / "in" / f"p{i}.parquet")
    source = open_source(tmp_path / "in", "text")
    writer = ShardWriter(tmp_path / "s")
    _write_chunks(writer, 12, 5)
    assemble(source, writer, tmp_path / "o.parquet", chunk_rows=5)
    back = pd.read_parquet(tmp_path / "o.parquet")
    assert back["n"].tolist() == list(range(4)) + list(range(10, 14)) + list(range(20, 24))
    assert back["label"].tolist() == [f"L{i}" for i in range(12)]


def test_buffered_writer_gathers_batches_and_a_crash_leaves_only_named_gaps(tmp_path):
    source, n = _source(tmp_path, 23)
    writer = ShardWriter(tmp_path / "s", buffer_rows=10)
    _write_chunks(writer, 18, 4)  # 0..17 in batches of 4: one shard of 12 rows, 6 rows still buffered
    assert [(lo, hi) for lo, hi, _ in writer.shards()] == [(0, 11)]
    # the process dies here: a new writer (a resumed run) re-runs the batch 8..11 then goes on
    resumed = ShardWriter(tmp_path / "s", buffer_rows=10)
    assert resumed.missing(n) == [(12, 23)]
    resumed.append(list(range(8, 12)), _labels(list(range(8, 12))))
    resumed.append(list(range(12, 23)), _labels(list(range(12, 23))))
    resumed.flush()
    assert [(lo, hi) for lo, hi, _ in resumed.shards()] == [(0, 11), (12, 22)]
    assemble(source, resumed, tmp_path / "o.jsonl")
    labels = [json.loads(line)["label"] for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert labels == [f"L{i}" for i in range(n)]


def test_rows_changed_after_their_shard_was_flushed_are_rewritten_from_the_store(tmp_path):
    """The run's finishing steps (final relabel, re-vote) change rows whose buffered shard is already on disk:
    a buffered writer skips rows a shard holds, so they are rewritten from the store, and the output follows it."""
    from autoannotator.run.store import RunStore

    source, n = _source(tmp_path)
    store = RunStore(tmp_path / "run.sqlite")
    store.put_results([{"row_id": i, "label": f"L{i}", "label_source": "slm_consensus", "uncertainty": 0.0,
                        "votes": {"vader": {"label": f"L{i}", "p": 0.5}}, "batch": 0, "confidence": 0.5}
                       for i in range(n)])
    writer = ShardWriter(tmp_path / "run" / "labelled", buffer_rows=10)
    writer.append_stored(store, 0, 10)
    writer.append_stored(store, 10, n)
    writer.flush()
    assert [(lo, hi) for lo, hi, _ in writer.shards()] == [(0, 9), (10, 22)]
    store.update_decisions([(3, "NEW3", "slm_consensus", 0.9), (21, "NEW21", "slm_consensus", 0.8)])
    store.update_votes([(21, {"vader": {"label": "NEW21", "p": 0.8}})])
    writer.append_stored(store, 0, n)  # what appending does: rows already in a shard are not written again
    writer.flush()
    assert writer.rewrite_stored(store, [3, 21]) == 2
    out = tmp_path / "run" / "out.csv"
    assemble(source, writer, out)
    frame = load_dataset(out, "text").frame
    assert frame["label"].tolist() == [("NEW" if i in (3, 21) else "L") + str(i) for i in range(n)]
    assert json.loads(frame["votes"][21]) == {"vader": {"label": "NEW21", "p": 0.8}}
    store.close()
