"""A rich progress bar with live counters, fed by the annotation graph's progress events."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class LabelProgress:
    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]labelling"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counters]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet, transient=False,
        )
        self.task_id = None
        self.llm_rows = 0
        self.pool = 0

    def __enter__(self) -> "LabelProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _counters(self) -> str:
        return f"LLM-verified {self.llm_rows} · pool {self.pool}"

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            if not self.quiet:
                self.console.print(f"[dim]run dir[/] {event['run_dir']}  [dim]models[/] {', '.join(event['models'])}"
                                   f"  [dim]LLM[/] {event['llm']}")
            self.task_id = self.progress.add_task("label", total=event["n_rows"], completed=event["rows_done"],
                                                  counters=self._counters())
        elif kind == "note" and not self.quiet:
            self.console.print(f"[cyan]note[/]: {event['text']}")
        elif kind == "resumed" and not self.quiet:
            self.console.print(f"[yellow]resuming[/]: {event['rows_done']} of {event['n_rows']} rows already labelled")
        elif kind == "verified":
            self.pool = event["pool_size"]
        elif kind == "accepted" and self.task_id is not None:
            self.llm_rows += event["llm"]
            self.progress.update(self.task_id, advance=event["n"], counters=self._counters())
        elif kind == "finetune_start" and not self.quiet:
            self.console.print(f"fine-tuning [bold]{event['model']}[/] (round {event['round']}) on {event['n']} samples")
        elif kind == "finetune_done" and not self.quiet:
            verdict = "[green]kept[/]" if event["accepted"] else "[red]rejected (old weights stay)[/]"
            if not event.get("votes", True):
                verdict += f" [yellow](not voting yet: {why_not_voting(event)})[/]"
            self.console.print(f"  held-out balanced accuracy {event.get('holdout_balanced_acc_before')} -> "
                               f"{event.get('holdout_balanced_acc_after')}: "
                               f"{verdict} ({event['seconds']} s)")


def why_not_voting(record: dict) -> str:
    if record.get("holdout_chance") == 1.0:
        return "the held-out slice holds a single label, so no score can beat a constant answer"
    return f"needs {record.get('holdout_required')} balanced accuracy, {record.get('holdout_chance')} is chance"
