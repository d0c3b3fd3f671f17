"""results.json, results.md and tradeoff.png for a benchmark run."""

from __future__ import annotations

import json
from pathlib import Path

from autoannotator.benchmark.suite import BenchRow

_COLUMNS = ["name", "accuracy", "macro_f1", "llm_calls", "llm_call_rate", "llm_tokens_in", "llm_tokens_out",
            "est_cost_usd", "wall_s", "coverage", "finetune_rounds", "audit_calls", "audit_estimate", "audit_interval",
            "settled_accuracy", "posterior_expects", "llm_unreliable"]


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return "–".join(_cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def render_markdown(rows: list[BenchRow], trajectory: list[dict], meta: dict) -> str:
    verifiers = sorted({r.verifier for r in rows if r.verifier})
    lines = [f"# Benchmark: {meta['data']}", "",
             f"- Task: {meta['instruction']} (labels: {', '.join(meta['labels'])}), {meta['n_rows']} rows, "
             f"gold column `{meta['gold_column']}`",
             f"- Verifier: {', '.join(verifiers) or 'none'}",
             f"- Command: `{meta['command']}`", ""]
    if any("simulated" in v for v in verifiers):
        lines += [f"**Every LLM figure below comes from a {verifiers[0]}: a seeded stand-in that returns the gold "
                  "label with that probability, not a real LLM. Token counts are estimates.**", ""]
    lines += ["| " + " | ".join(_COLUMNS) + " | verifier |", "|" + " --- |" * (len(_COLUMNS) + 1)]
    for row in rows:
        data = row.model_dump()
        lines.append("| " + " | ".join(_cell(data[c]) for c in _COLUMNS) + f" | {row.verifier or '–'} |")
    if trajectory:
        lines += ["", "## Trainable SLMs after each fine-tuning round", "",
                  "| config | round | model | kept | votes | trained on | held-out balanced acc | accuracy on all rows | "
                  "agreement with final labels |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in trajectory:
            lines.append(f"| {p['config']} | {p['round']} | {p['model']} | {p['accepted']} | {_cell(p.get('votes'))} | "
                         f"{_cell(p.get('pool_train'))}"
                         f" | {_cell(p.get('holdout_balanced_acc_after'))} | {_cell(p.get('accuracy'))} | "
                         f"{_cell(p.get('agreement_with_final'))} |")
    return "\n".join(lines) + "\n"


def plot_tradeoff(rows: list[BenchRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    curve = sorted((r for r in rows if r.routing == "calibrated" and r.accuracy is not None and r.beta is not None),
                   key=lambda r: r.llm_call_rate)
    if len(curve) > 1:  # the calibrated rule with and without budgets: one curve
        ax.plot([r.llm_call_rate for r in curve], [r.accuracy for r in curve], "-", color="tab:green", alpha=0.6,
                label="calibrated (budget sweep)")
    for row in rows:
        if row.accuracy is None:
            continue
        if row.routing == "calibrated":
            marker, color = "D", "tab:green"
        elif row.routing == "paper":
            marker, color = "o", "tab:blue"
        else:
            marker, color = ("s", "tab:red") if row.name == "llm_only" else ("^", "tab:gray")
        ax.scatter(row.llm_call_rate, row.accuracy, marker=marker, s=60, color=color)
        ax.annotate(row.name, (row.llm_call_rate, row.accuracy), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    if len(curve) > 1:
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("LLM-call share (routing calls / samples; audit calls not counted)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(-0.05, 1.1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(rows: list[BenchRow], trajectory: list[dict], meta: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps([r.model_dump() for r in rows], indent=2), encoding="utf-8")
    (out_dir / "trajectory.json").write_text(json.dumps(trajectory, indent=2), encoding="utf-8")
    (out_dir / "results.md").write_text(render_markdown(rows, trajectory, meta), encoding="utf-8")
    verifiers = sorted({r.verifier for r in rows if r.verifier})
    plot_tradeoff(rows, out_dir / "tradeoff.png",
                  f"{meta['data']} — accuracy vs LLM-call rate — verifier: {', '.join(verifiers)}")
