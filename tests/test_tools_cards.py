"""read_model_card: online from recorded Hub files on loopback, offline from a cache the test lays out."""

from __future__ import annotations

import json

from hub_fixtures import caches, hub, recorded_hub  # noqa: F401 (fixtures)

from autoannotator.discovery.cards import ModelCardResult, trim_body
from autoannotator.tools.plan_tools import make_read_model_card_tool


SNLP = "s-nlp/roberta_toxicity_classifier"
LATEST = "cardiffnlp/twitter-roberta-base-sentiment-latest"


def read(model: str, **extra) -> dict | str:
    out = make_read_model_card_tool().invoke({"model": model, **extra})
    if isinstance(out, dict):
        ModelCardResult.model_validate(out)
    return out


def test_online_card_metadata_metrics_and_labels(hub, caches):
    card = read(SNLP)
    assert card["found"] and card["source"] == "hub"
    assert card["license"] == "openrail++" and card["languages"] == ["en"]
    assert card["datasets"] == ["google/jigsaw_toxicity_pred"] and card["base_model"] == ["FacebookAI/roberta-large"]
    assert card["labels"] == ["neutral", "toxic"]  # config.json, the card does not list them
    assert card["pipeline_tag"] == "text-classification"  # implied by a classifier config
    metrics = {(m["metric"], m["value"], m["split"]) for m in card["metrics"]}
    assert metrics == {("auc", 0.98, "test"), ("f1", 0.76, "test")}
    assert card["body"].startswith("## Toxicity Classification Model") and not card["body_truncated"]
    assert f"/{SNLP}/resolve/main/README.md" in hub.paths()
    assert not list(caches.hf.iterdir())  # fetched into the metadata cache, not the HF cache


def test_long_card_is_cut_at_a_line_with_later_headings_listed(hub):
    card = read(f"hf:{LATEST}#LABEL_0=negative", max_body_chars=900)  # a spec with a mapping works too
    assert card["model"] == LATEST and card["body_truncated"]
    assert card["body"].startswith("# Twitter-roBERTa-base for Sentiment Analysis")
    assert len(card["body"]) <= 900 + 4 and "## Example Pipeline" in card["body"]
    assert card["body"].count("```") % 2 == 0  # a code block the cut opened is closed
    assert "### References" in card["more_headings"]
    assert not any("Preprocess" in h or h == "# PT" for h in card["more_headings"])  # code comments are not headings
    assert card["labels"] == ["negative", "neutral", "positive"] and card["languages"] == ["en"]


def test_online_missing_repo_and_repo_without_card(hub):
    missing = read("nobody/no-such-model")
    assert not missing["found"] and "not found" in missing["note"]
    bare = read("unitary/toxic-bert")
    assert bare["found"] and bare["labels"][0] == "toxic" and "no model card" in bare["note"]


def test_offline_reads_the_hf_cache(caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recorded_hub.lay_out_cache(caches.hf, SNLP, {
        "README.md": recorded_hub.fixture_file(SNLP, "README.md"),
        "config.json": recorded_hub.fixture_file(SNLP, "config.json")})
    card = read(SNLP)
    assert card["found"] and card["source"] == "hf-cache" and "HF_HUB_OFFLINE" in card["note"]
    assert card["license"] == "openrail++" and card["labels"] == ["neutral", "toxic"] and len(card["metrics"]) == 2
    gone = read("JungleLee/bert-toxic-comment-classification")
    assert not gone["found"] and "no local copy" in gone["note"]


def test_a_card_read_online_stays_readable_offline(hub, caches, monkeypatch):
    assert read("JungleLee/bert-toxic-comment-classification")["source"] == "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = read("JungleLee/bert-toxic-comment-classification")
    assert again["found"] and again["source"] == "hf-cache" and again["license"] == "afl-3.0"
    assert again["labels"] == ["non-toxic", "toxic"]


def test_local_folder_card(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en, de]\n---\n# Mine\n\nA classifier.\n")
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                    "id2label": {"0": "bad", "1": "good"}}))
    card = read(str(folder))
    assert card["source"] == "local-dir" and card["languages"] == ["en", "de"] and card["labels"] == ["bad", "good"]
    assert card["body"] == "# Mine\n\nA classifier."


def test_broken_or_odd_yaml_header_still_gives_a_card(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "README.md").write_text("---\nmodel-index: [oops\n---\n# Body\n")
    card = read(str(folder))
    assert card["found"] and card["body"] == "# Body" and "unreadable YAML header" in card["note"]
    odd = "---\nlicense: [mit, apache-2.0]\npipeline_tag: 5\nmodel-index: {x: 1}\n---\nHi\n"
    (folder / "README.md").write_text(odd)
    card = read(str(folder))
    assert card["license"] == "mit, apache-2.0" and card["pipeline_tag"] == "5" and card["metrics"] == []


def test_packaged_scorers_have_built_in_cards():
    vader = read("vader")
    assert vader["source"] == "packaged" and vader["license"] == "MIT"
    assert vader["labels"] == ["positive", "negative", "neutral"]
    assert "compound" in vader["body"] and "## How it scores" in vader["body"]
    student = read("student")
    assert student["labels"] == [] and "trainable" in student["note"] and "MiniLM" in student["body"]
    assert read("profanity")["labels"] == ["toxic", "non-toxic"]


def test_bad_ids_and_arguments_are_messages():
    assert "not a hub id" in read("not a valid id!")
    assert read("").startswith("invalid arguments for read_model_card: model")
    assert "max_body_chars" in read("vader", max_body_chars=5)


def test_trim_body_keeps_short_text_whole():
    assert trim_body("<!-- hidden -->\n# A\n\n\n\ntext", 100) == ("# A\n\ntext", False, [])
