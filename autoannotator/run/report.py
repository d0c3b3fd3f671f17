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
from autoannotator.run.report_decisions import decision_view, unreliable_text
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


def unreliable_warning(decide: dict) -> str | None:
    v = decide.get("llm_verdict") or {}
    if not v.get("unreliable"):
        return None
    return (unreliable_text(v, decide.get("llm_accuracy_assumed", 0))
            + "; the labels follow the SLMs' posterior, not its answers.")


def _decision_markdown(report: dict[str, Any]) -> list[str]:
    view = decision_view(report)
    if view is None:
        return []
    lines = ["", "## Decisions", ""] + [f"- {b}" for b in view.bullets]
    for t in view.tables:
        lines += ["", t.caption, "", "| " + " | ".join(t.header) + " |", "| " + " | ".join("---" for _ in t.header) + " |"]
        lines += ["| " + " | ".join(row) + " |" for row in t.rows]
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
