"""report.json and report.md: what was labelled, by whom, at what cost, and how well (given gold labels)."""

from __future__ import annotations

import json
import resource
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from autoannotator.costs import LLMUsage, cost_summary
from autoannotator.finetune import finetune_summary
from autoannotator.plan_estimate import PlanEstimate, compare_with_spent
from autoannotator.run.report_html import render_html
from autoannotator.run.tally import RowTally

EMBEDDED_WARNING = (
    "The embedded LLM (SmolLM2-135M-Instruct, 4-bit) makes the tool run anywhere offline but labels poorly; "
    "point autoannotator at a strong model with --llm-base-url URL --llm-model NAME (any OpenAI-compatible endpoint)."
)


def quality(results: Iterable[dict], gold: Sequence[str | None], labels: list[str]) -> dict[str, Any]:
    """Accuracy overall and per label_source, over rows whose gold label is one of the task's labels."""
    return RowTally(labels, with_gold=True).add_all(results, gold).quality()


def model_agreement(results: Iterable[dict], model_names: list[str]) -> dict[str, dict[str, Any]]:
    """Per model: how often it voted, and how often its vote matched the final label."""
    return RowTally([], model_names).add_all(results).model_agreement()


def build_report(*, run: dict, usage: LLMUsage, settings, models: list[dict],
                 finetune_records: list[dict], timings: dict[str, float], labels: list[str], llm: dict,
                 warnings: list[str], results: Iterable[dict] | None = None, gold: Sequence[str | None] | None = None,
                 tally: RowTally | None = None, sandbox: str = "none",
                 planning_usage: LLMUsage | None = None, estimate: PlanEstimate | None = None,
                 decide: dict | None = None) -> dict[str, Any]:
    """The report dict. The per-row figures come from ``tally`` (gathered by streaming over the run store,
    with gold labels when the tally has them), or from ``results`` and ``gold`` (a list indexed by row id)."""
    if tally is None:
        tally = RowTally(labels, [m["name"] for m in models], with_gold=gold is not None).add_all(results or [], gold)
    n = tally.n
    sources = tally.sources
    audit_usage = ((decide or {}).get("audit") or {}).get("usage") or {}
    if audit_usage:  # the audit's calls are counted and priced apart from the routing's
        usage = usage.model_copy(update={"calls": max(0, usage.calls - int(audit_usage.get("calls", 0))),
                                         "tokens_in": max(0, usage.tokens_in - int(audit_usage.get("tokens_in", 0))),
                                         "tokens_out": max(0, usage.tokens_out - int(audit_usage.get("tokens_out", 0)))})
    report = {
        "run": run,
        "n_samples": n,
        "label_sources": dict(sources),
        "label_counts": dict(tally.label_counts),
        **cost_summary(usage, n, sources.get("llm_verified", 0) + sources.get("llm_overruled", 0), settings.prices),
        "finetune_rounds": finetune_records,
        "n_finetune_rounds": len({r["round"] for r in finetune_records}),
        "finetune_summary": finetune_summary(finetune_records),
        "models": models,
        "model_agreement": tally.model_agreement(),
        "settings": {"k": settings.k, "epsilon": settings.epsilon, "beta": settings.beta,
                     "min_votes": settings.min_votes, "batch_size": settings.batch_size,
                     "routing": getattr(settings, "routing", "paper"), "llm_budget": getattr(settings, "llm_budget", None),
                     "max_llm_cost": getattr(settings, "max_llm_cost", None), "audit": getattr(settings, "audit", None),
                     "few_shot": getattr(settings, "few_shot", 0)},
        "llm": llm,
        "sandbox": sandbox,
        "llm_calls_planning": planning_usage.calls if planning_usage else 0,
        "llm_tokens_planning": (planning_usage.tokens_in + planning_usage.tokens_out) if planning_usage else 0,
        "planning_cost_usd": round(settings.prices.cost(planning_usage.tokens_in, planning_usage.tokens_out), 6)
        if planning_usage else 0.0,
        "timings_s": {k: round(v, 3) for k, v in sorted(timings.items()) if k != "orchestration_overhead_share"},
        "orchestration_overhead_share": round(timings["orchestration_overhead_share"], 4)
        if "orchestration_overhead_share" in timings else None,
        "throughput_samples_per_s": round(n / timings["graph_wall"], 2) if timings.get("graph_wall") else None,
        # This process only: the embedded LLM server and sandboxed workers are separate processes.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "per_batch": tally.per_batch(),
        "warnings": warnings,
    }
    if decide is not None:
        report.update(decision_section(decide, settings))
        note = unreliable_warning(decide)
        if note:
            report["warnings"] = [note] + list(report["warnings"])
    if tally.with_gold:
        report.update(tally.quality())
        report["confusion_by_source"] = tally.confusion_by_source()
    if estimate is not None:
        report["estimate"] = estimate_next_to_spent(estimate, report)
    return report


def estimate_next_to_spent(estimate: PlanEstimate, report: dict[str, Any]) -> dict[str, Any]:
    """The plan made before the first batch, each figure with what the run then spent and whether it fell in range."""
    return {**compare_with_spent(estimate, report), "pilot_rows": estimate.pilot_rows,
            "hard_share": estimate.hard_share.model_dump(), "llm_only": estimate.llm_only.model_dump(),
            "assumptions": estimate.assumptions}


def decision_section(decide: dict, settings) -> dict[str, Any]:
    """The decision layer's part of report.json: the rule, budget, reliabilities, verdict, audit."""
    usage = (decide.get("audit") or {}).get("usage") or {}
    return {"decision": decide, "audit_llm_calls": int(usage.get("calls", 0)),
            "audit_cost_usd": round(float(usage.get("cost_usd", 0.0)), 6)}


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


def unreliable_warning(decide: dict) -> str | None:
    v = decide.get("llm_verdict") or {}
    if not v.get("unreliable"):
        return None
    return (unreliable_text(v, decide.get("llm_accuracy_assumed", 0))
            + "; the labels follow the SLMs' posterior, not its answers.")


def _decision_markdown(report: dict[str, Any]) -> list[str]:
    d = report.get("decision")
    if not d:
        return []
    b = d.get("budget") or {}
    cap = d.get("paper_cap") or {}
    if b.get("llm_budget_share") is not None:
        budget = f"share {b['llm_budget_share']}"
    elif cap.get("applied") and cap.get("share") is not None:
        budget = f"at most the paper rule's share of rows ({cap['share']:.1%}, the default; the audit apart)"
    else:
        budget = "none"
    lines = ["", "## Decisions", "",
             f"- Routing: {d['routing']}" + (f" (assumed LLM accuracy {d['llm_accuracy_assumed']}, margin {d['margin']})"
                                           if d["routing"] == "calibrated" else ""),
             "- LLM budget: " + budget
             + (f", max cost ${b['max_llm_cost_usd']}" if b.get("max_llm_cost_usd") is not None else "")
             + f"; spent {b.get('share_spent', 0):.1%} of rows"
             + (f"; the cap kept {cap['held_back']} rows from the LLM that it was expected to improve "
                "(--llm-budget 1 lifts it)" if cap.get("applied") and cap.get("held_back") else ""),
             f"- Audit: {report.get('audit_llm_calls', 0)} LLM calls (${report.get('audit_cost_usd', 0):.6f}), "
             "counted apart from the routing's"]
    revoted = (d.get("final_revote") or {}).get("rows")
    if revoted:
        lines.append(f"- Final re-vote: {revoted} rows settled before the last fine-tuning round were voted on "
                     "again by the final models; their labels follow the final posterior")
    top = d.get("top_up") or {}
    if top.get("rows"):
        lines.append(f"- Top-up: {top['rows']} settled rows the final posterior was least sure of were asked after the "
                     f"last batch, from the {top['reserve']:.0%} of the cap kept back for them (counted in the spend above)"
                     + (f"; {top['audited_reused']} audited rows as unsure as those are labelled by their audit answer "
                        "and left the audit, so it vouches for the rows that stayed settled" if top.get("audited_reused")
                        else ""))
    if d.get("expected_accuracy") is not None:
        lines.append(f"- Expected accuracy: {d['expected_accuracy']}, the final posterior's mean confidence in its labels "
                     "(no gold used; only as good as the posterior's calibration: the audit below checks it)")
    target = d.get("target")
    if target:
        lines.append(f"- Accuracy target: {target['accuracy']}; {target['spared']} rows the LLM was expected to improve "
                     "were not asked because the expected accuracy had reached it")
    v = d.get("llm_verdict") or {}
    if v.get("agreement") is not None:
        lines.append(f"- LLM check: agreement with confident SLM labels {v['agreement']} on {v['n']} rows "
                     f"(at least {v['expected_agreement']} expected of the assumed accuracy even beside weak SLMs, "
                     f"{v['independent_agreement']} for an answerer ignoring the text): "
                     + (f"UNRELIABLE ({unreliable_text(v, d['llm_accuracy_assumed'])})" if v["unreliable"] else "ok"))
    rel = d.get("reliability") or {}
    if rel:
        lines += ["", "Estimated reliability per source, by the final posterior (the one that labels: the mean "
                  "probability it gives the source's votes; it takes the LLM at its assumed accuracy) and by the "
                  "label model (Dawid–Skene; it assumes sources err independently, so SLMs that err together look "
                  "better than they are, and an LLM that disagrees with them worse):", "",
                  "| source | accuracy by the posterior | by the label model | 95 % interval (label model) | votes |",
                  "| --- | --- | --- | --- | --- |"]
        for name, r in rel.items():
            lo, hi = r["accuracy_interval"]
            if r.get("assumed_accuracy") is not None:
                by_posterior = f"{r['assumed_accuracy']} (assumed)"
            else:
                by_posterior = "–" if r.get("posterior_accuracy") is None else str(r["posterior_accuracy"])
            lines.append(f"| {name} | {by_posterior} | {r['accuracy']} | {lo}–{hi} | {r['n_votes']} |")
    est = (d.get("audit") or {}).get("estimates") or {}
    if est:
        lines += ["", "Accuracy of the settled labels estimated from the audit (their agreement with the LLM, "
                  "corrected for its assumed accuracy; the interval holds if the LLM is that accurate):", "",
                  "| label source | audited | agreement | estimated accuracy | 95 % interval |",
                  "| --- | --- | --- | --- | --- |"]
        for src, e in est.items():
            lines.append(f"| {src} | {e['n']} | {e['agreement']} | {e['estimate']} | "
                         f"{e['interval'][0]}–{e['interval'][1]} |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# autoannotator run {report['run'].get('run_id', '')}", ""]
    lines += [f"- Task: {report['run'].get('instruction', '')}",
              f"- Labels: {', '.join(report['run'].get('labels', []))}",
              f"- Samples: {report['n_samples']}  (by source: "
              + ", ".join(f"{k} {v}" for k, v in report["label_sources"].items()) + ")",
              f"- LLM: {report['llm'].get('model_id')} ({'embedded' if report['llm'].get('embedded') else 'endpoint'})"
              + (f"; this run switched LLMs: {' -> '.join(report['llm']['all'])}"
                 if len(report["llm"].get("all") or []) > 1 else ""),
              f"- Sandbox: {report['sandbox']}",
              f"- LLM calls: {report['llm_calls']} ({report['llm_call_rate']:.1%} of samples), tokens in/out "
              f"{report['llm_tokens_in']}/{report['llm_tokens_out']}"
              + (f" (plus {report['llm_calls_planning']} calls labelling the probe samples while planning)"
                 if report["llm_calls_planning"] else "")
              + (f"; {report['llm_calls_not_kept']} of them answered without a usable label or twice"
                 if report.get("llm_calls_not_kept") else "")
              + (f"; {report['llm_requests_timed_out']} more timed out (not priced)"
                 if report.get("llm_requests_timed_out") else ""),
              f"- Estimated cost at {report['price_table']['model']} prices: ${report['est_cost_usd']:.6f}; "
              f"labelling everything with the LLM (estimate): "
              + (f"${report['all_llm_baseline_cost_usd']:.6f}" if report["all_llm_baseline_cost_usd"] is not None
                 else "unknown (no LLM call made)")]
    if "accuracy" in report:
        lines.append(f"- Accuracy against gold: {report['accuracy']} over {report['n_scored']} rows"
                     + (f" ({report['gold_unknown_rows']} rows with a gold label outside the label set not scored)"
                        if report["gold_unknown_rows"] else ""))
        for src, acc in report["by_label_source"].items():
            lines.append(f"  - {src}: {acc['accuracy']} ({acc['correct']}/{acc['n']})")
    lines += _decision_markdown(report)
    lines += ["", "## Models", "", "| model | kind | trainable | coverage | agreement with final label |",
              "| --- | --- | --- | --- | --- |"]
    for m in report["models"]:
        agr = report["model_agreement"].get(m["name"], {})
        lines.append(f"| {m['name']} | {m['kind']} | {m['trainable']} | {agr.get('coverage')} | {agr.get('agreement')} |")
    if report["finetune_rounds"]:
        lines += ["", "## Fine-tuning rounds", "",
                  "| round | kind | model | rows labelled | train | holdout | balanced acc before | "
                  "balanced acc after | chance | needed to vote | acc after | earliest rows before / after | "
                  "kept | votes | seconds |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in report["finetune_rounds"]:
            lines.append(f"| {r['round']} | {r.get('kind', 'full')} | {r['model']} | {r.get('rows_labelled')} | "
                         f"{r['n_train']} | {r['n_holdout']} | "
                         f"{r.get('holdout_balanced_acc_before')} | {r.get('holdout_balanced_acc_after')} | "
                         f"{r.get('holdout_chance')} | {r.get('holdout_required')} | {r['holdout_acc_after']} | "
                         f"{r.get('forgetting_acc_before')} / {r.get('forgetting_acc_after')} | "
                         f"{r['accepted']}{' (' + r['rejected_for'] + ')' if r.get('rejected_for') else ''} | "
                         f"{r.get('votes')} | {r.get('seconds')} |")
    if report.get("estimate"):
        est = report["estimate"]
        lines += ["", f"## The plan's estimate (pilot of {est.get('pilot_rows')} rows) and what was spent, the audit "
                  "included", "",
                  "| | low | expected | high | spent | in range |", "| --- | --- | --- | --- | --- | --- |"]
        for key in ("llm_calls", "tokens", "cost_usd", "wall_s"):
            e = est.get(key) or {}
            lines.append(f"| {key} | {_fmt(e.get('low'))} | {_fmt(e.get('expected'))} | {_fmt(e.get('high'))} | "
                         f"{_fmt(e.get('spent'))} | {e.get('in_range')} |")
        lines += [""] + [f"- {a}" for a in est.get("assumptions", [])]
    lines += ["", "## Timings (s)", ""] + [f"- {k}: {v}" for k, v in report["timings_s"].items()]
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}" if value < 1 else f"{value:,.1f}"
    return str(value)


def write_report(report: dict[str, Any], run_dir: Path) -> None:
    """report.json, report.md and report.html (self-contained: opens without a network)."""
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (run_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (run_dir / "report.html").write_text(render_html(report), encoding="utf-8")
