"""What every command shares: the progress console (stderr: results go to stdout) and the run summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

console = Console(stderr=True)


def summary(report: dict, run_dir: Path) -> None:
    line = (f"[bold green]done[/]: {report['n_samples']} rows -> {report['run']['out_path']}  "
            f"LLM calls {report['llm_calls']} ({report['llm_call_rate']:.1%})  est. ${report['est_cost_usd']:.6f}")
    if report.get("accuracy") is not None:
        line += f"  accuracy {report['accuracy']:.4f}"
    console.print(line)
    console.print(f"report: {run_dir / 'report.md'}")
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning[/]: {warning}")
