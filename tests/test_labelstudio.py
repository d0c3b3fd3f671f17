"""Label Studio round trip: export the hard rows as tasks, review them (a faked export), import the labels back."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from autoannotator import runner
from autoannotator.verify.simulated import SimulatedVerifier
from autoannotator.cli.app import app
from autoannotator.config import Settings
from autoannotator.data import load_dataset
from autoannotator.errors import UserError
from autoannotator.run.labelstudio import labeling_config, parse_export
from autoannotator.run.store import RunStore
from autoannotator.task import parse_labels

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, n: int = 40) -> tuple[Path, Path]:
    data = tmp_path / "reviews.csv"
    pd.read_csv(REPO / "examples" / "reviews.csv", dtype=str, keep_default_na=False).head(n).to_csv(data, index=False)
    gold = load_dataset(data, None, "label").gold
    settings = Settings(models=["vader", "textblob"], beta=100_000, batch_size=8, runs_dir=tmp_path / "runs")
    _, run_dir = runner.label(
        settings, data, instruction="label these reviews for sentiment", labels=parse_labels("positive,negative"),
        gold_column="label", verifier_factory=lambda task, _d, run_id: SimulatedVerifier(gold, task, 0.7,
                                                                                        run_id=run_id))
    return data, run_dir


def _results(run_dir: Path) -> list[dict]:
    store = RunStore(run_dir / "run.sqlite")
    try:
        return store.results()
    finally:
        store.close()


def invoke(*args: str):
    return CliRunner().invoke(app, ["runs", *args])


def test_export_writes_hard_rows_as_tasks_with_predictions_and_prints_the_config(tmp_path):
    data, run_dir = _run(tmp_path)
    results = _results(run_dir)
    texts = pd.read_csv(data, dtype=str, keep_default_na=False)["text"].tolist()
    result = invoke("export-labelstudio", str(run_dir), str(tmp_path / "tasks.json"))
    assert result.exit_code == 0, result.output
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    hard = [r for r in results if r["label_source"] == "llm_verified"]
    assert hard and [t["data"]["row_id"] for t in tasks] == [r["row_id"] for r in hard]
    for task, rec in zip(tasks, hard):
        assert task["data"]["text"] == texts[rec["row_id"]]
        (pred,) = task["predictions"]
        assert pred["model_version"] == "autoannotator" and pred["score"] == pytest.approx(1 - rec["uncertainty"])
        assert pred["result"] == [{"from_name": "label", "to_name": "text", "type": "choices",
                                   "value": {"choices": [rec["label"]]}}]
    view = ET.fromstring(result.stdout.strip().splitlines()[-1])
    assert view.tag == "View" and view.find("Text").get("value") == "$text"
    choices = view.find("Choices")
    assert choices.get("name") == "label" and choices.get("toName") == "text"
    assert [c.get("value") for c in choices.findall("Choice")] == ["positive", "negative"]

    assert invoke("export-labelstudio", str(run_dir), str(tmp_path / "all.json"), "--all").exit_code == 0
    assert len(json.loads((tmp_path / "all.json").read_text())) == 40


def test_labeling_config_escapes_label_names():
    view = ET.fromstring(labeling_config(['a & b', 'say "hi"', "<x>"]))
    assert [c.get("value") for c in view.iter("Choice")] == ['a & b', 'say "hi"', "<x>"]


def _annotated(task: dict, *choices: str, cancelled: bool = False) -> dict:
    anns = [{"id": i, "was_cancelled": cancelled,
             "result": [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [c]}}]}
            for i, c in enumerate(choices)]
    return {"id": 1000 + task["data"]["row_id"], **task, "annotations": anns}


def test_round_trip_changes_exactly_the_reviewed_rows(tmp_path):
    data, run_dir = _run(tmp_path)
    before = _results(run_dir)
    out_before = pd.read_csv(run_dir / "reviews.labelled.csv", dtype=str, keep_default_na=False)
    gold = out_before["input_label"].tolist()
    assert invoke("export-labelstudio", str(run_dir), str(tmp_path / "tasks.json")).exit_code == 0
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    wrong = [t for t in tasks if before[t["data"]["row_id"]]["label"] != gold[t["data"]["row_id"]]]
    right = [t for t in tasks if before[t["data"]["row_id"]]["label"] == gold[t["data"]["row_id"]]]
    assert len(wrong) >= 2 and len(right) >= 2, "the P=0.7 simulated verifier gets some hard rows wrong"
    flip = {"positive": "negative", "negative": "positive"}
    export = [
        _annotated(wrong[0], gold[wrong[0]["data"]["row_id"]]),  # corrected
        _annotated(wrong[1], "nonsense-old", gold[wrong[1]["data"]["row_id"]].upper()),  # latest answer wins
        _annotated(right[0], gold[right[0]["data"]["row_id"]]),  # confirmed: reviewed, not changed
        _annotated(right[1], flip[gold[right[1]["data"]["row_id"]]], cancelled=True),  # cancelled: ignored
        {**right[2], "annotations": []} if len(right) > 2 else _annotated(right[1], "x", cancelled=True),
    ]
    (tmp_path / "export.json").write_text(json.dumps(export))
    result = invoke("import-labelstudio", str(run_dir), str(tmp_path / "export.json"))
    assert result.exit_code == 0, (result.output, result.exception)
    assert "3 reviewed row(s), 2 label(s) changed" in result.output

    reviewed = {t["data"]["row_id"] for t in (wrong[0], wrong[1], right[0])}
    after = _results(run_dir)
    out_after = pd.read_csv(run_dir / "reviews.labelled.csv", dtype=str, keep_default_na=False)
    for b, a in zip(before, after):
        if a["row_id"] in reviewed:
            assert a["label"] == gold[a["row_id"]] and a["label_source"] == "human_reviewed"
            assert (a["votes"], a["llm_label"], a["uncertainty"]) == (b["votes"], b["llm_label"], b["uncertainty"])
        else:
            assert a == b
    changed = out_before.compare(out_after)
    assert sorted(changed.index) == sorted(reviewed)  # the output file differs in exactly those rows
    assert set(out_after.loc[sorted(reviewed), "label_source"]) == {"human_reviewed"}

    report = json.loads((run_dir / "report.json").read_text())
    section = report["human_reviewed"]
    assert section["n_reviewed"] == 3 and section["n_changed"] == 2 and section["n_rows_human_reviewed"] == 3
    assert sorted(c["row_id"] for c in section["changes"]) == sorted(t["data"]["row_id"] for t in wrong[:2])
    acc = lambda frame: round(float((frame["label"] == frame["input_label"]).mean()), 4)  # noqa: E731
    assert section["accuracy_before"] == acc(out_before) and section["accuracy_after"] == acc(out_after)
    assert report["accuracy"] == acc(out_after) and report["label_sources"]["human_reviewed"] == 3
    assert "Human review" in (run_dir / "report.md").read_text()
    listed = CliRunner().invoke(app, ["runs", "list", "--runs-dir", str(run_dir.parent)], env={"COLUMNS": "250"})
    assert "3 reviewed" in listed.output


@pytest.mark.parametrize("export, message", [
    ({"tasks": []}, "expected Label Studio's JSON export"),
    ([{"data": {"text": "x"}}], "no data.row_id"),
    ([{"data": {"row_id": 999}, "annotations": []}], "row_id 999 is not a row"),
    ([{"data": {"row_id": "3"}, "annotations": []}], "row_id '3' is not a row"),
    ([{"data": {"row_id": 0}, "annotations": [{"result": [{"type": "choices", "value": {"choices": ["meh"]}}]}]}],
     "label 'meh' is not one of positive, negative"),
    ([{"data": {"row_id": 0}, "annotations": [{"result": [{"value": {"choices": ["positive", "negative"]}}]}]}],
     "expected one label"),
])
def test_bad_exports_are_one_line_user_errors(export, message):
    with pytest.raises(UserError, match=message) as err:
        parse_export(export, ["positive", "negative"], 40, "export.json")
    assert "\n" not in str(err.value)


def test_import_refuses_bad_files_and_leaves_the_run_untouched(tmp_path):
    _, run_dir = _run(tmp_path, n=16)
    before, report = _results(run_dir), (run_dir / "report.json").read_text()
    (tmp_path / "broken.json").write_text("[{")
    (tmp_path / "unknown.json").write_text(json.dumps([_annotated({"data": {"row_id": 1}}, "neutral")]))
    for name in ("broken.json", "unknown.json", "missing.json"):
        result = invoke("import-labelstudio", str(run_dir), str(tmp_path / name))
        assert isinstance(result.exception, UserError), (name, result.output)
    assert _results(run_dir) == before and (run_dir / "report.json").read_text() == report


def test_import_needs_a_finished_run(tmp_path):
    _, run_dir = _run(tmp_path, n=16)
    (run_dir / "report.json").unlink()
    (tmp_path / "ok.json").write_text(json.dumps([_annotated({"data": {"row_id": 1}}, "positive")]))
    result = invoke("import-labelstudio", str(run_dir), str(tmp_path / "ok.json"))
    assert isinstance(result.exception, UserError) and "not finished" in str(result.exception)


def test_round_trip_on_a_sharded_input_never_reads_every_row(tmp_path, monkeypatch):
    """DATA as a directory of shards (the run reads it in chunks): export and import work on it, and neither
    asks the store for all its rows at once nor loads the data set whole."""
    rows = pd.read_csv(REPO / "examples" / "reviews.csv", dtype=str, keep_default_na=False).head(60)
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(3):
        rows.iloc[20 * i:20 * (i + 1)].to_csv(folder / f"part-{i}.csv", index=False)
    gold = rows["label"].tolist()
    settings = Settings(models=["vader", "textblob"], beta=100_000, batch_size=8, runs_dir=tmp_path / "runs")
    report, run_dir = runner.label(
        settings, folder, instruction="label these reviews for sentiment", labels=parse_labels("positive,negative"),
        gold_column="label", verifier_factory=lambda task, _d, run_id: SimulatedVerifier(gold, task, 0.7,
                                                                                        run_id=run_id))
    before = _results(run_dir)

    def whole(*_a, **_k):
        raise AssertionError("read every row at once")

    monkeypatch.setattr(RunStore, "results", whole)
    monkeypatch.setattr("autoannotator.data.load_dataset", whole)
    assert invoke("export-labelstudio", str(run_dir), str(tmp_path / "tasks.json"), "--all").exit_code == 0
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert [t["data"]["row_id"] for t in tasks] == list(range(60))
    assert [t["data"]["text"] for t in tasks] == rows["text"].tolist()
    target = next(r for r in before if r["label"] != gold[r["row_id"]])["row_id"]
    (tmp_path / "export.json").write_text(json.dumps([_annotated(tasks[target], gold[target])]))
    result = invoke("import-labelstudio", str(run_dir), str(tmp_path / "export.json"))
    assert result.exit_code == 0, (result.output, result.exception)
    monkeypatch.undo()
    after = _results(run_dir)
    assert [a for a, b in zip(after, before) if a != b] == [{**before[target], "label": gold[target],
                                                            "label_source": "human_reviewed"}]
    out = pd.read_csv(report["run"]["out_path"], dtype=str, keep_default_na=False)
    assert out["label"].tolist() == [r["label"] for r in after] and len(out) == 60
    section = json.loads((run_dir / "report.json").read_text())["human_reviewed"]
    assert section["accuracy_after"] == round(float((out["label"] == out["input_label"]).mean()), 4)
    assert section["accuracy_after"] > section["accuracy_before"]


def test_push_sends_the_tasks_in_chunks(tmp_path):
    from autoannotator.run.labelstudio import push_run

    _, run_dir = _run(tmp_path)

    class Recorder:
        def __init__(self):
            self.imports: list[list[dict]] = []

        def create_project(self, title, label_config):
            return {"id": 7}

        def import_tasks(self, project_id, tasks):
            self.imports.append(tasks)
            return {"task_count": len(tasks), "prediction_count": len(tasks)}

        def project_url(self, project_id):
            return f"http://ls/projects/{project_id}"

    client = Recorder()
    pushed = push_run(run_dir, client, all_rows=True, chunk_tasks=15)  # type: ignore[arg-type]
    assert [len(c) for c in client.imports] == [15, 15, 10]
    assert [t["data"]["row_id"] for c in client.imports for t in c] == list(range(40))
    assert (pushed.n_tasks, pushed.n_predictions, pushed.project_id) == (40, 40, 7)
