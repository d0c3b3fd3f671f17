"""What every command shares: the progress console (stderr: results go to stdout) and the run summary."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from rich.console import Console

# rich follows the terminal: no colour or cursor codes when stderr is not a TTY. With NO_COLOR set
# (https://no-color.org) no styling at all: rich alone would drop the colours but keep bold and the like.
# Off a terminal, lines are not wrapped either: a pipeline reads an error as one line.
console = Console(stderr=True, color_system=None if os.environ.get("NO_COLOR") else "auto",
                  soft_wrap=not sys.stderr.isatty())


def summary(report: dict, run_dir: Path, fmt: str = "text") -> None:
    if fmt == "json":  # stdout, one object: what a pipeline reads next
        print(json.dumps({"event": "done", "run_dir": str(run_dir), "out_path": report["run"]["out_path"],
                          "report": str(run_dir / "report.json"), "n_samples": report["n_samples"],
                          "llm_calls": report["llm_calls"], "llm_call_rate": report["llm_call_rate"],
                          "est_cost_usd": report["est_cost_usd"], "accuracy": report.get("accuracy"),
                          "warnings": report.get("warnings", [])}, default=str))
        return
    line = (f"[bold green]done[/]: {report['n_samples']} rows -> {report['run']['out_path']}  "
            f"LLM calls {report['llm_calls']} ({report['llm_call_rate']:.1%})  est. ${report['est_cost_usd']:.6f}")
    if report.get("accuracy") is not None:
        line += f"  accuracy {report['accuracy']:.4f}"
    console.print(line)
    console.print(f"report: {run_dir / 'report.md'} (and report.html)")
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning[/]: {warning}")
