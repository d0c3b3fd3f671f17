"""The report's "Decisions" part as plain data: the lines and tables that report.md and report.html both show.

One builder, two renderers (``report.render_markdown``, ``report_html.render_html``), so the page a user opens in a
browser says what the Markdown says: how rows were routed, what the cap held back, the LLM check, the final
posterior's expected accuracy, each source's estimated reliability and the audit's estimate of the settled labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class DecisionView:
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


def unreliable_text(verdict: dict, assumed: float) -> str:
    """One sentence for the run's first lines and its report: why the LLM was judged unreliable."""
    acc = verdict.get("llm_accuracy")
    estimate = f"label model's estimate of its accuracy: {'unknown' if acc is None else f'{acc:.2f}'}"
    failed, n = verdict.get("failed_on"), verdict.get("failed_n") or verdict.get("n")
    seen = verdict.get("failed_agreement", verdict.get("agreement")) or 0.0
    floor = verdict.get("failed_floor", verdict.get("expected_agreement")) or 0.0
    if failed not in (None, "overall"):
        why = (f"on the {n} rows the SLMs agree are '{failed}' it answered '{failed}' {seen:.0%} of the time, "
               f"below the {floor:.0%} it would reach even if those SLM labels were no better than chance")
    else:
        why = (f"it agrees with the SLMs' agreeing labels on {seen:.0%} of {n} rows, below the {floor:.0%} an LLM "
               f"right {assumed:.0%} of the time would reach even beside weak SLMs")
    return f"LLM judged unreliable: {why} ({estimate})"


def _budget_bullet(d: dict[str, Any]) -> str:
    b = d.get("budget") or {}
    cap = d.get("paper_cap") or {}
    if b.get("llm_budget_share") is not None:
        budget = f"share {b['llm_budget_share']}"
    elif cap.get("applied") and cap.get("share") is not None:
        budget = f"at most the paper rule's share of rows ({cap['share']:.1%}, the default; the audit apart)"
    else:
        budget = "none"
    return ("LLM budget: " + budget
            + (f", max cost ${b['max_llm_cost_usd']}" if b.get("max_llm_cost_usd") is not None else "")
            + f"; spent {b.get('share_spent', 0):.1%} of rows"
            + (f"; the cap kept {cap['held_back']} rows from the LLM that it was expected to improve "
               "(--llm-budget 1 lifts it)" if cap.get("applied") and cap.get("held_back") else ""))


def _finishing_bullets(d: dict[str, Any]) -> list[str]:
    out = []
    revoted = (d.get("final_revote") or {}).get("rows")
    if revoted:
        out.append(f"Final re-vote: {revoted} rows settled before the last fine-tuning round were voted on "
                   "again by the final models; their labels follow the final posterior")
    top = d.get("top_up") or {}
    if top.get("rows"):
        out.append(f"Top-up: {top['rows']} settled rows the final posterior was least sure of were asked after the "
                   f"last batch, from the {top['reserve']:.0%} of the cap kept back for them (counted in the spend above)"
                   + (f"; {top['audited_reused']} audited rows as unsure as those are labelled by their audit answer "
                      "and left the audit, so it vouches for the rows that stayed settled" if top.get("audited_reused")
                      else ""))
    if d.get("expected_accuracy") is not None:
        out.append(f"Expected accuracy: {d['expected_accuracy']}, the final posterior's mean confidence in its labels "
                   "(no gold used; only as good as the posterior's calibration: the audit below checks it)")
    target = d.get("target")
    if target:
        out.append(f"Accuracy target: {target['accuracy']}; {target['spared']} rows the LLM was expected to improve "
                   "were not asked because the expected accuracy had reached it")
    v = d.get("llm_verdict") or {}
    if v.get("agreement") is not None:
        out.append(f"LLM check: agreement with confident SLM labels {v['agreement']} on {v['n']} rows "
                   f"(at least {v['expected_agreement']} expected of the assumed accuracy even beside weak SLMs, "
                   f"{v['independent_agreement']} for an answerer ignoring the text): "
                   + (f"UNRELIABLE ({unreliable_text(v, d['llm_accuracy_assumed'])})" if v["unreliable"] else "ok"))
    return out


def _reliability_table(d: dict[str, Any]) -> Table | None:
    rel = d.get("reliability") or {}
    if not rel:
        return None
    rows = []
    for name, r in rel.items():
        lo, hi = r["accuracy_interval"]
        if r.get("assumed_accuracy") is not None:
            by_posterior = f"{r['assumed_accuracy']} (assumed)"
        else:
            by_posterior = "–" if r.get("posterior_accuracy") is None else str(r["posterior_accuracy"])
        rows.append([str(name), by_posterior, str(r["accuracy"]), f"{lo}–{hi}", str(r["n_votes"])])
    return Table("Estimated reliability per source, by the final posterior (the one that labels: the mean "
                 "probability it gives the source's votes; it takes the LLM at its assumed accuracy) and by the "
                 "label model (Dawid–Skene; it assumes sources err independently, so SLMs that err together look "
                 "better than they are, and an LLM that disagrees with them worse):",
                 ["source", "accuracy by the posterior", "by the label model", "95 % interval (label model)", "votes"],
                 rows)


def _audit_table(d: dict[str, Any]) -> Table | None:
    est = (d.get("audit") or {}).get("estimates") or {}
    if not est:
        return None
    def expected(e: dict) -> str:
        if e.get("posterior_expects") is None:
            return "–"
        return f"{e['posterior_expects']} ({'inside' if e.get('posterior_within') else 'OUTSIDE'})"

    return Table("Accuracy of the settled labels estimated from the audit (their agreement with the LLM, "
                 "corrected for its assumed accuracy; the interval holds if the LLM is that accurate), and what the "
                 "posterior expected of the same rows: outside the interval, the expected accuracy above is not to "
                 "be trusted (inside, it may still be off: a small audit holds a wide range):",
                 ["label source", "audited", "agreement", "estimated accuracy", "95 % interval", "the posterior expected"],
                 [[str(src), str(e["n"]), str(e["agreement"]), "unknown" if e["estimate"] is None else str(e["estimate"]),
                   f"{e['interval'][0]}–{e['interval'][1]}", expected(e)] for src, e in est.items()])


def decision_view(report: dict[str, Any]) -> DecisionView | None:
    """The Decisions part of a report dict (report.json), or None for a run without the decision layer."""
    d = report.get("decision")
    if not d:
        return None
    bullets = [f"Routing: {d['routing']}" + (f" (assumed LLM accuracy {d['llm_accuracy_assumed']}, margin {d['margin']})"
                                             if d["routing"] == "calibrated" else ""),
               _budget_bullet(d),
               f"Audit: {report.get('audit_llm_calls', 0)} LLM calls (${report.get('audit_cost_usd', 0):.6f}), "
               "counted apart from the routing's"]
    bullets += _finishing_bullets(d)
    tables = [t for t in (_reliability_table(d), _audit_table(d)) if t is not None]
    return DecisionView(bullets, tables)
