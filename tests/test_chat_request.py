"""Chat does what was asked: "Label FILE for sentiment, positive or negative, and write the result to OUT.csv"
runs with exactly those labels, "sentiment" as the task and OUT.csv as the output, with the weak (embedded)
model's intent router and with a strong model that left the output out and added a label.
Scripted models and a simulated verifier, as in test_chat_graph.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from langchain_core.messages import ToolMessage
from test_chat_graph import Session, _call, _data

from autoannotator.graphs.chat import parse_label_request, route_intent
from autoannotator.run.plan import RunPlan

ASK = "Label {data} for sentiment, positive or negative, and write the result to {out}"


def _plan_args(out: dict) -> dict:
    (pending,) = out["__interrupt__"]
    (plan,) = pending.value["plans"]
    assert plan["tool"] == "start_labelling"
    return plan["args"]


def _check_run(s: Session, out_csv: Path, n: int = 40) -> None:
    result = next(m for m in reversed(s.messages()) if isinstance(m, ToolMessage))
    assert result.status != "error", result.content
    summary = json.loads(result.content)
    assert Path(summary["out_path"]) == out_csv
    frame = pd.read_csv(out_csv, dtype=str, keep_default_na=False)
    assert len(frame) == n and set(frame["label"]) <= {"positive", "negative"} and len(set(frame["label"])) == 2
    plan = RunPlan.load(Path(summary["run_dir"]))
    assert plan.task.label_names == ["positive", "negative"]
    assert plan.task.instruction == "label these texts for sentiment"
    assert plan.out_path == str(out_csv)


def test_weak_model_runs_the_request_as_asked(tmp_path):
    data, out_csv = _data(tmp_path), tmp_path / "results" / "OUT.csv"
    s = Session(tmp_path, [], weak=True)  # the embedded model is never asked: the intent router reads the words
    args = _plan_args(s.say(ASK.format(data=data, out=out_csv)))
    assert args == {"data_path": str(data), "out": str(out_csv), "labels": "positive,negative",
                    "task": "label these texts for sentiment"}
    assert not out_csv.exists()
    s.answer("yes")
    _check_run(s, out_csv)
    assert str(out_csv) in s.messages()[-1].content  # the reply says where the labels went
    assert s.chat.calls == []


def test_strong_model_call_gets_the_named_labels_and_output(tmp_path):
    data, out_csv = _data(tmp_path), tmp_path / "OUT.csv"
    sloppy = {"data_path": str(data), "task": "label these texts for sentiment",
              "labels": "positive,negative,neutral"}  # added a label, dropped the output file
    s = Session(tmp_path, [_call("start_labelling", sloppy), "Done: OUT.csv has the labels."])
    args = _plan_args(s.say(ASK.format(data=data, out=out_csv)))
    assert args["labels"] == "positive,negative" and args["out"] == str(out_csv)
    assert args["task"] == "label these texts for sentiment"
    s.answer("yes")
    _check_run(s, out_csv)
    s.chat.assert_complete()


def test_strong_model_call_on_another_file_is_left_alone(tmp_path):
    data = _data(tmp_path)
    other = {"data_path": str(data), "task": "label these texts for sentiment", "labels": "positive,negative"}
    s = Session(tmp_path, [_call("start_labelling", other)])
    args = _plan_args(s.say("label elsewhere.csv for topic, sports or politics, and write it to t.csv"))
    assert args == other  # the model chose another file: the words were about something else
    s.answer("no")


def test_an_output_type_that_cannot_be_written_is_refused_before_the_run(tmp_path):
    data = _data(tmp_path)
    s = Session(tmp_path, [_call("start_labelling", {"data_path": str(data), "task": "sentiment",
                                                     "labels": "positive,negative", "out": str(tmp_path / "o.xlsx")}),
                           "It cannot write that."])
    s.say("go")
    s.answer("yes")
    result = next(m for m in reversed(s.messages()) if isinstance(m, ToolMessage))
    assert result.status == "error" and "must end in one of .csv" in result.content
    assert not list((tmp_path / "runs").glob("*/run.json"))


@pytest.mark.parametrize("text,expected", [
    ("Label data/reviews.csv for sentiment, positive or negative, and write the result to OUT.csv",
     {"data_path": "data/reviews.csv", "labels": "positive,negative", "out": "OUT.csv", "task": "sentiment"}),
    ("label x.csv for sentiment (positive/negative) and save it as out/y.jsonl.",
     {"data_path": "x.csv", "labels": "positive,negative", "out": "out/y.jsonl", "task": "sentiment"}),
    ("Label reviews.tsv for sentiment: positive, negative or neutral. Gold column stars. Save the labels to a.parquet",
     {"data_path": "reviews.tsv", "labels": "positive,negative,neutral", "gold_column": "stars", "out": "a.parquet",
      "task": "sentiment"}),
    ("label x.csv as spam or ham into y.csv", {"data_path": "x.csv", "labels": "spam,ham", "out": "y.csv",
                                               "task": "spam or ham"}),
    ('label "my data.csv" for topic with labels sports, politics and tech, write it to "out dir/o.csv"',
     {"data_path": "my data.csv", "labels": "sports,politics,tech", "out": "out dir/o.csv", "task": "topic"}),
    ("please label r.jsonl for topic with labels a,b, c and gold column label",
     {"data_path": "r.jsonl", "labels": "a,b,c", "gold_column": "label", "task": "topic"}),
    # Not label sets: no list marker in front of the words, or a longer phrase after them.
    ("label x.tsv for whether it is spam or not", {"data_path": "x.tsv", "task": "whether it is spam or not"}),
    ("label x.csv for gold prices", {"data_path": "x.csv", "task": "gold prices"}),
    ("label x.csv for sentiment, positive or negative reviews of films",
     {"data_path": "x.csv", "task": "sentiment, positive or negative reviews of films"}),
])
def test_parse_label_request(text, expected):
    want = {**expected, "task": f"label these texts for {expected['task']}"}
    assert parse_label_request(text) == want
    assert route_intent(text) == {"name": "start_labelling", "args": want}


@pytest.mark.parametrize("text", ["label x.csv", "label the rows please", "why did row 3 go to the LLM?"])
def test_no_label_request(text):
    assert parse_label_request(text) is None
