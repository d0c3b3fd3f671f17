"""report.html: self-contained (no URL, no script), every section there when its data is, outside strings escaped."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from autoannotator.run.report_html import (
    NO_LABEL,
    confusion_by_source,
    finetune_batches,
    per_batch,
    render_html,
)

LABELS = ["positive", "negative"]


def _results() -> list[dict]:
    """Three batches of 4 rows; the verifier answers 3, 2 and 1 of them."""
    out = []
    for rid in range(12):
        batch = rid // 4
        verified = (rid % 4) < 3 - batch
        label = LABELS[rid % 2] if rid != 11 else None
        out.append({"row_id": rid, "batch": batch, "label": label,
                    "label_source": "skipped_empty" if label is None else ("llm_verified" if verified else "slm_consensus"),
                    "llm_label": label if verified else None, "votes": {}, "uncertainty": 0.0})
    return out


def _report(**extra) -> dict:
    results = _results()
    gold = [LABELS[(rid + (rid == 5)) % 2] for rid in range(12)]  # row 5 is wrong
    report = {
        "run": {"run_id": "r1", "instruction": "label <b>reviews</b> & more", "labels": LABELS,
                "out_path": "/tmp/out.csv"},
        "n_samples": 12, "label_sources": {"llm_verified": 6, "slm_consensus": 5, "skipped_empty": 1},
        "llm_calls": 6, "llm_call_rate": 0.5, "llm_tokens_in": 600, "llm_tokens_out": 30, "est_cost_usd": 0.000345,
        "all_llm_baseline_cost_usd": 0.00069, "cost_ratio_to_all_llm": 0.5,
        "price_table": {"model": "gpt-3.5-turbo-0125"},
        "settings": {"k": 3, "epsilon": 1e-6, "beta": 3, "batch_size": 4},
        "llm": {"model_id": "sim", "embedded": False},
        "n_finetune_rounds": 2,
        "finetune_rounds": [
            {"round": 1, "model": "student", "n_train": 2, "n_holdout": 1, "holdout_balanced_acc_before": 0.5,
             "holdout_balanced_acc_after": 0.6, "holdout_required": 0.7, "accepted": True, "votes": False},
            {"round": 2, "model": "student", "n_train": 4, "n_holdout": 1, "holdout_balanced_acc_before": 0.6,
             "holdout_balanced_acc_after": 0.8, "holdout_required": 0.7, "accepted": True, "votes": True},
        ],
        "model_agreement": {"vader": {"coverage": 0.9, "agreement": 0.7},
                            "hf:<script>alert(1)</script>": {"coverage": 1.0, "agreement": None}},
        "per_batch": per_batch(results),
        "accuracy": 0.9, "n_scored": 11,
        "by_label_source": {"llm_verified": {"accuracy": 0.8333}, "slm_consensus": {"accuracy": 1.0}},
        "confusion_by_source": confusion_by_source(results, gold, LABELS),
        "warnings": ["watch out: <img src=x onerror=alert(1)>"],
    }
    report.update(extra)
    return report


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Collect:
    parser = _Collect()
    parser.feed(page)
    return parser


def test_per_batch_counts_rows_and_verifier_answers():
    batches = per_batch(_results())
    assert [(b["batch"], b["rows"], b["llm_calls"]) for b in batches] == [(0, 4, 3), (1, 4, 2), (2, 4, 1)]
    assert batches[2]["by_source"] == {"llm_verified": 1, "skipped_empty": 1, "slm_consensus": 2}
    # Records without llm_label (older stores): label_source decides.
    legacy = [{k: v for k, v in r.items() if k != "llm_label"} for r in _results()]
    assert [b["llm_calls"] for b in per_batch(legacy)] == [3, 2, 1]


def test_finetune_batches_replays_the_beta_rule():
    batches = [{"batch": i, "llm_calls": c} for i, c in enumerate([2, 2, 1, 5, 0])]
    assert finetune_batches(batches, beta=3, n_rounds=9) == [1, 3]  # pool 4 >= 3 at batch 1; 9 - 4 >= 3 at 3
    assert finetune_batches(batches, beta=3, n_rounds=1) == [1]
    assert finetune_batches(batches, beta=3, n_rounds=0) == []


def test_confusion_by_source_counts_gold_against_label():
    results = _results()
    gold = [LABELS[(rid + (rid == 5)) % 2] for rid in range(12)]
    gold[0] = "neutral"  # outside the label set: not scored
    conf = confusion_by_source(results, gold, LABELS)
    assert set(conf) == {"llm_verified", "slm_consensus", "skipped_empty"}
    llm = conf["llm_verified"]
    assert llm["columns"] == LABELS  # no unlabelled row there: no "(no label)" column
    # llm_verified rows: 1, 2, 4, 5, 8 (row 0 unscored); row 5 is gold positive, labelled negative.
    assert llm["matrix"] == [[3, 1], [0, 1]]
    assert conf["skipped_empty"]["columns"] == LABELS + [NO_LABEL]
    assert conf["skipped_empty"]["matrix"] == [[0, 0, 0], [0, 0, 1]]


def test_page_is_self_contained():
    page = render_html(_report())
    assert not re.search(r"(?i)https?:|//[a-z0-9]|<script|<link|@import|url\(", page)
    parsed = _parse(page)
    srcs = [a.get("src") or a.get("href") for _, a in parsed.tags if a.get("src") or a.get("href")]
    assert srcs == []
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3


def test_every_section_is_there_given_its_data():
    page = render_html(_report())
    assert "None" not in page  # a figure the run has not got reads "–" (the second model's agreement)
    ids = {a["id"] for _, a in _parse(page).tags if "id" in a}
    assert {"headline", "per-batch", "trajectory", "agreement", "confusion", "warnings"} <= ids
    text = " ".join(_parse(page).text)
    assert "6 of 12 rows to the verifier" in text
    assert "FT 1" in text and "FT 2" in text  # beta 3: after batch 0 (3 answers) and batch 2 (3 more)
    assert "50.0% of the rows" in text and "$0.000345" in text and "$0.000690" in text
    assert "0.9" in text and "over 11 rows" in text
    # One bar per batch and the verifier's share drawn to scale: 3 of 4 rows is 3/4 of the rows bar.
    bars = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)" class="(rows|llm)"/>', page)
    rows = [float(h) for h, c in bars if c == "rows"]
    llm = [float(h) for h, c in bars if c == "llm"]
    assert len(rows) == 3 and llm[0] / rows[0] == pytest.approx(0.75, abs=0.01)
    # The trajectory plots each round's after-accuracy: two filled points for student.
    assert len(re.findall(r"student, round \d: after", page)) == 2
    # A confusion table per source, with the wrong row counted off the diagonal.
    assert page.count('<table class="confusion">') == 3


def test_sections_say_so_when_data_is_missing():
    page = render_html(_report(finetune_rounds=[], n_finetune_rounds=0, per_batch=[], model_agreement={}))
    text = " ".join(_parse(page).text)
    assert "No fine-tuning round ran" in text and "No per-batch record" in text and "No model recorded" in text
    no_gold = _report()
    for key in ("accuracy", "confusion_by_source", "by_label_source", "n_scored"):
        no_gold.pop(key)
    page = render_html(no_gold)
    assert 'id="confusion"' not in page and "accuracy vs gold" not in page


def test_outside_strings_are_escaped():
    page = render_html(_report())
    assert "<script>" not in page and "<img" not in page and "<b>reviews</b>" not in page
    assert "&lt;b&gt;reviews&lt;/b&gt; &amp; more" in page
    assert "hf:&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    # Escaped in attributes too: a label name with a quote cannot end the title attribute.
    results = [{"row_id": 0, "batch": 0, "label": 'a"b', "label_source": "llm_verified", "llm_label": 'a"b'}]
    conf = confusion_by_source(results, ['a"b'], ['a"b', "c"])
    page = render_html(_report(confusion_by_source=conf))
    assert 'title="gold a&quot;b, labelled a&quot;b: 1"' in page


def test_plan_estimate_sits_next_to_what_was_spent():
    est = {"llm_calls": {"low": 4, "expected": 6, "high": 8}, "tokens": {"low": 400, "expected": 630, "high": 900},
           "cost_usd": {"low": 0.0002, "expected": 0.0003, "high": 0.0004},
           "wall_s": {"low": 1.0, "expected": 2.0, "high": 3.0}, "assumptions": ["a <guess>"]}
    page = render_html(_report(estimate=est, timings_s={"graph_wall": 2.5}))
    assert 'id="estimate"' in page and "range 4–8; spent 6, the audit included" in page and "a &lt;guess&gt;" in page
    row = re.search(r"<tr><th>LLM calls</th>(.*?)</tr>", page).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row) == ["4", "6", "8", "6"]
    # the headline card and the table count the audit's calls, as the estimate does
    page = render_html(_report(estimate=est, audit_llm_calls=2,
                               decision={**_decision(), "audit": {"usage": {"calls": 2, "tokens_in": 20,
                                                                            "tokens_out": 2}}}))
    row = re.search(r"<tr><th>LLM calls</th>(.*?)</tr>", page).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row)[-1] == "8" and "range 4–8; spent 8, the audit included" in page


def _decision() -> dict:
    return {"routing": "calibrated", "llm_accuracy_assumed": 0.9, "margin": 0.02,
            "budget": {"llm_budget_share": None, "max_llm_cost_usd": None, "calls": 6, "share_spent": 0.5},
            "paper_cap": {"applied": True, "share": 0.5, "held_back": 2},
            "expected_accuracy": 0.8765,
            "reliability": {"hf:<i>m</i>": {"accuracy": 0.91, "n_votes": 12.0, "accuracy_interval": [0.6, 0.98],
                                            "posterior_accuracy": 0.7, "posterior_votes": 12},
                            "llm": {"accuracy": 0.6, "n_votes": 6.0, "accuracy_interval": [0.3, 0.85],
                                    "posterior_accuracy": None, "assumed_accuracy": 0.9}},
            "llm_verdict": {"unreliable": False, "n": 30, "agreement": 0.8, "independent_agreement": 0.5,
                            "expected_agreement": 0.6},
            "audit": {"estimates": {"slm_consensus": {"n": 4, "agreement": 0.75, "estimate": 0.8125,
                                                      "interval": [0.4, 1.0]}}}}


def test_the_page_shows_the_decisions_the_markdown_shows():
    """The routing, the cap, the LLM check, the expected accuracy (a headline card: it needs no gold), each source's
    reliability and the audit's estimate: what a run without gold has to say about its labels' quality."""
    from autoannotator.run.report import _decision_markdown

    report = _report(decision=_decision(), audit_llm_calls=4, audit_cost_usd=0.0001)
    for key in ("accuracy", "confusion_by_source", "by_label_source", "n_scored"):
        report.pop(key)  # no gold column
    page = render_html(report)
    assert 'id="decisions"' in page and "expected accuracy" in page and "0.8765" in page
    text = " ".join(_parse(page).text)
    md = "\n".join(_decision_markdown(report))
    bullets = [line[2:] for line in md.splitlines() if line.startswith("- ")]
    assert len(bullets) == 5 and all(b in text for b in bullets)
    cells = [c.strip() for line in md.splitlines() if line.startswith("| ") and "---" not in line
             for c in line.strip("|").split("|")]
    assert "0.9 (assumed)" in cells and "0.4–1.0" in cells and all(c in text for c in cells)
    assert "hf:&lt;i&gt;m&lt;/i&gt;" in page and "<i>m</i>" not in page
    assert 'id="decisions"' not in render_html(_report())  # a run without the decision layer: no section
    unknown = _decision()
    unknown["audit"]["estimates"]["slm_consensus"].update(estimate=None, interval=[0.0, 1.0])  # an LLM that tells nothing
    page = render_html(_report(decision=unknown))
    section = page[page.index('id="decisions"'):page.index("</section>", page.index('id="decisions"'))]
    assert "<td>unknown</td>" in section and "None" not in section
