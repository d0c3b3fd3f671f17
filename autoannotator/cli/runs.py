"""`autoannotator runs ...`: look into past runs (list, report, generated code, one row), resume one, and
round-trip its hard rows through Label Studio. Everything is read from the run directory; only
`resume` and `import-labelstudio` change it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.markdown import Markdown
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from autoannotator.config import Settings, load_settings
from autoannotator.errors import UserError
from autoannotator.run.inspect import (
    RowAnswer,
    code_versions,
    list_runs as run_dirs,
    read_report,
    resolve_run,
    row_answer,
    row_text,
    run_state,
)
from autoannotator.run.paths import RunPaths
from autoannotator.run.plan import RunPlan
from autoannotator.run.report import render_markdown
from autoannotator.run.store import RunStore

runs_app = typer.Typer(no_args_is_help=True, help="Past runs: list, report, code, one row, resume, Label Studio.")
out = Console(highlight=False)  # results go to stdout; the shared CLI console (stderr) carries progress

_RUNS_DIR = typer.Option(None, "--runs-dir", help="Where runs live (default: settings.runs_dir, ./runs).")
_CONFIG = typer.Option(None, help="TOML config file.")


def _settings(runs_dir: Optional[Path], config: Optional[Path]) -> Settings:
    return load_settings({"runs_dir": runs_dir}, config)


def _load(run: str, runs_dir: Optional[Path], config: Optional[Path]) -> tuple[Path, RunPlan, Settings]:
    settings = _settings(runs_dir, config)
    run_dir = resolve_run(run, settings.runs_dir)
    return run_dir, RunPlan.load(run_dir), settings


@runs_app.command("list")
def list_runs(runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """Every run under the runs directory, oldest first."""
    root = _settings(runs_dir, config).runs_dir
    dirs = run_dirs(root)
    if not dirs:
        out.print(f"no runs in {root}")
        return
    headers = ["id", "created", "data", "rows", "LLM calls", "accuracy", "status"]
    rows = [_list_row(run_dir) for run_dir in dirs]
    # The id is what every other command takes: never cut it. Where a table cannot hold every column
    # whole (ids are ~45 characters), one line per run.
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    if sum(widths) + 3 * len(headers) > out.width:
        for r in rows:
            out.print(Text(r[0], style="bold") + Text(f"  {r[1]} · {r[2]} · rows {r[3]} · LLM calls {r[4] or '-'}"
                                                      f" · accuracy {r[5] or '-'} · {r[6]}"))
        return
    table = Table(*headers, box=box.SIMPLE_HEAD)
    for r in rows:
        table.add_row(*(Text(cell) for cell in r))  # Text: a name with [brackets] is not markup
    out.print(table)


def _list_row(run_dir: Path) -> list[str]:
    try:
        plan = RunPlan.load(run_dir)
    except UserError:
        return [run_dir.name, "", "", "", "", "", "unreadable run.json"]
    st = run_state(run_dir, plan)
    report = st.report or {}
    acc = "" if report.get("accuracy") is None else f"{report['accuracy']:.4f}"
    review = report.get("human_reviewed")
    if review and review.get("accuracy_before") is not None:
        acc = f"{review['accuracy_before']:.4f} → {acc}"
    status = "finished" if st.finished else f"stopped at row {st.done}"
    if review:
        status += f", {review['n_rows_human_reviewed']} reviewed"
    created = datetime.fromisoformat(plan.created_at).astimezone().strftime("%Y-%m-%d %H:%M")
    return [run_dir.name, created, Path(plan.data_path).name,
            f"{st.done}/{st.total if st.total is not None else '?'}",
            "" if st.llm_calls is None else str(st.llm_calls), acc, status]


@runs_app.command()
def show(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
         as_json: bool = typer.Option(False, "--json", help="Print report.json."),
         runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """The run's report."""
    run_dir, plan, _ = _load(run, runs_dir, config)
    if not (run_dir / "report.json").is_file():
        raise UserError(f"run {plan.run_id} has no report yet (stopped at row {run_state(run_dir, plan).done}); "
                        f"finish it: autoannotator runs resume {plan.run_id}")
    if as_json:
        typer.echo((run_dir / "report.json").read_text(encoding="utf-8"))
        return
    md = RunPaths(run_dir).report_md
    text = md.read_text(encoding="utf-8") if md.is_file() else render_markdown(read_report(run_dir) or {})
    out.print(Markdown(text))


@runs_app.command()
def code(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
         model: Optional[str] = typer.Argument(None, help="Only this model's (or the ensemble's) code."),
         runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """The run's generated deployment code, every version, with its sandbox smoke test."""
    run_dir, plan, _ = _load(run, runs_dir, config)
    deploy = RunPaths(run_dir).deploy
    if not deploy.is_dir():
        out.print(f"run {plan.run_id} has no generated code: its models ran in-process "
                  f"({', '.join(plan.model_specs)})")
        return
    folders = sorted(p for p in deploy.iterdir() if p.is_dir())
    if model is not None:
        folders = [p for p in folders if p.name == model] or [p for p in folders if p.name.startswith(model)]
        if len(folders) != 1:
            names = ", ".join(p.name for p in sorted(deploy.iterdir()) if p.is_dir()) or "none"
            raise UserError(f"no single deploy folder '{model}' in run {plan.run_id} (there are: {names})")
    if not folders:
        out.print(f"run {plan.run_id}: {deploy} holds no code yet")
    for folder in folders:
        versions = code_versions(folder)
        if not versions:
            out.print(Text(f"{folder.name}: no versions", style="dim"))
        for n, path in versions:
            out.rule(f"{folder.name} · v{n}")
            out.print(Syntax(path.read_text(encoding="utf-8").rstrip("\n"), "python", line_numbers=True))
            out.print(_smoke(path.with_name(f"v{n}.smoke.json")))


def _smoke(path: Path) -> Any:
    if not path.is_file():
        return Text("no smoke test recorded for this version", style="yellow")
    try:
        smoke = json.loads(path.read_text(encoding="utf-8"))
        code_ = smoke.get("exit_code")
    except (ValueError, AttributeError):
        return Text(f"{path.name} is unreadable", style="red")
    style = "green" if code_ == 0 else "red"
    body = Text(f"exit code {code_} · backend {smoke.get('backend', '?')}", style=style)
    for stream in ("stdout", "stderr"):
        if str(smoke.get(stream) or "").strip():
            body.append(f"\n{stream}:\n", style="bold").append(str(smoke[stream]).rstrip())
    return Panel(body, title="smoke test", expand=False)


@runs_app.command()
def sample(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
           row: int = typer.Argument(..., help="Row id (0-based position in the data file)."),
           runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """One row: its text, each model's vote, U, the route, the verifier's answer, the final label and gold."""
    run_dir, plan, settings = _load(run, runs_dir, config)
    st = run_state(run_dir, plan)
    if row < 0 or (st.total is not None and row >= st.total):
        raise UserError(f"row {row} is not in run {plan.run_id} (rows 0..{(st.total or 1) - 1})")
    store = RunStore(RunPaths(run_dir).store)
    try:
        rec = store.result(row)
    finally:
        store.close()
    if rec is None:
        raise UserError(f"row {row} is not labelled yet: run {plan.run_id} stopped at row {st.done}")
    text, gold = row_text(plan, row)
    out.rule(f"run {plan.run_id} · row {row}")
    out.print(Panel(Text(text or "(empty)"), expand=False))
    votes = Table("model", "vote", "p")
    for name, vote in rec["votes"].items():
        votes.add_row(name, vote.get("label") or "[dim]abstains[/]", "" if vote.get("p") is None else f"{vote['p']:.4f}")
    out.print(votes)
    out.print(f"U: {'-' if rec['uncertainty'] is None else round(rec['uncertainty'], 4)}   "
              f"route: {rec['label_source']}   SLM majority: {rec['majority'] or '-'}")
    out.print(Text("verifier: ") + _answer_text(row_answer(run_dir, plan, settings.llm_max_text_chars, text, rec)))
    out.print(Text("final label: ") + Text(str(rec["label"]), style="bold"))
    if plan.gold_column:
        mark = "" if gold is None else (" ✓" if gold == rec["label"] else " ✗")
        out.print(f"gold ({plan.gold_column}): {gold if gold is not None else 'unknown'}{mark}")


def _answer_text(answer: RowAnswer) -> Text:
    """The verifier's answer, as ``runs sample`` draws it: the label bold, who paid dim."""
    if answer.kind in ("skipped_by_human", "failed"):
        return Text(answer.note, style="yellow")
    if answer.kind == "not_asked":
        return Text(answer.note, style="dim")
    label = Text(f"{answer.label!r}", style="bold")
    if answer.who is None:
        return label + Text(f" {answer.note}", style="dim")
    return Text(f"{answer.who}: ") + label + Text(f" — {answer.paid_line()}", style="dim")


@runs_app.command()
def resume(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
           verifier: Optional[str] = typer.Option(None, help="llm or human (default: what the run started with)."),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary."),
           runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """Continue a stopped run (as `autoannotator label --resume RUN_DIR`)."""
    from autoannotator import runner
    from autoannotator.verify.human import human_hooks
    from autoannotator.cli.common import console, summary
    from autoannotator.cli.progress import LabelProgress

    run_dir, plan, settings = _load(run, runs_dir, config)
    if run_state(run_dir, plan).finished:
        console.print(f"run {plan.run_id} is finished; nothing to resume (see `autoannotator runs show`)")
        return
    with LabelProgress(console, quiet=quiet) as progress:
        hooks = human_hooks(verifier, run_dir, console, progress.progress)
        report, used_dir = runner.label(settings, None, run_dir=run_dir, resume=True,  # type: ignore[arg-type]
                                        on_progress=progress, **hooks)
    summary(report, used_dir)


@runs_app.command("retry-failed")
def retry_failed(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
                 switch_llm: bool = typer.Option(False, "--switch-llm", help="Ask the LLM configured now, not the "
                                                 "run's own (the report lists both)."),
                 runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """Ask the run's LLM again about the rows it never gave a valid label (label_source llm_failed)."""
    from autoannotator import runner
    from autoannotator.cli.common import summary

    run_dir, _, settings = _load(run, runs_dir, config)
    report, used_dir = runner.retry_failed(settings, run_dir, switch_llm=switch_llm)
    summary(report, used_dir)


@runs_app.command("export-labelstudio")
def export_labelstudio(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
                       out_file: Path = typer.Argument(..., metavar="OUT.json", help="Label Studio tasks to write."),
                       all_rows: bool = typer.Option(False, "--all", help="Every row, not only the hard ones."),
                       runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """Write the run's hard rows (or all) as Label Studio tasks, its labels as predictions; print the config."""
    from autoannotator.run.labelstudio import iter_run_tasks, labeling_config, write_tasks

    run_dir, plan, _ = _load(run, runs_dir, config)
    n = write_tasks(iter_run_tasks(run_dir, plan, all_rows), out_file)
    typer.echo(f"wrote {n} task(s) to {out_file}; Label Studio labeling config:", err=True)
    typer.echo(labeling_config(plan.task.label_names))


@runs_app.command("push-labelstudio")
def push_labelstudio(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
                     url: str = typer.Option(..., "--url", envvar="LABEL_STUDIO_URL",
                                             help="Label Studio's address, e.g. http://localhost:8080."),
                     api_key: str = typer.Option(..., "--api-key", envvar="LABEL_STUDIO_API_KEY",
                                                 help="Personal access token or legacy token (Account & Settings)."),
                     all_rows: bool = typer.Option(False, "--all", help="Every row, not only the hard ones."),
                     title: Optional[str] = typer.Option(None, help="Project title (default: the run id)."),
                     runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """Create a Label Studio project for the run and import its hard rows (or all), its labels as predictions;
    print the project's URL. After review, export JSON there and run `runs import-labelstudio`."""
    from autoannotator.run.labelstudio import LabelStudioClient, push_run

    run_dir, _, _ = _load(run, runs_dir, config)
    with LabelStudioClient(url, api_key) as client:
        pushed = push_run(run_dir, client, all_rows=all_rows, title=title)
    typer.echo(f"created project {pushed.project_id} with {pushed.n_tasks} task(s), {pushed.n_predictions} "
               f"prediction(s); review them, export JSON, then: "
               f"autoannotator runs import-labelstudio {run_dir.name} EXPORT.json", err=True)
    typer.echo(pushed.project_url)


@runs_app.command("import-labelstudio")
def import_labelstudio(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
                       export: Optional[Path] = typer.Argument(None, metavar="[EXPORT.json]",
                                                               help="Label Studio's JSON export (or --project)."),
                       project: Optional[int] = typer.Option(None, "--project",
                                                             help="Fetch the export of this Label Studio project."),
                       url: Optional[str] = typer.Option(None, "--url", envvar="LABEL_STUDIO_URL",
                                                         help="Label Studio's address, with --project."),
                       api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LABEL_STUDIO_API_KEY",
                                                             help="Personal access token or legacy token."),
                       runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """Take the labels reviewed in Label Studio into the run: store, output file and report. From an export
    file, or straight from the project (`--project ID --url ... --api-key ...`)."""
    from autoannotator.run.labelstudio import LabelStudioClient, import_review

    run_dir, plan, _ = _load(run, runs_dir, config)
    if (export is None) == (project is None):
        raise UserError("give either Label Studio's EXPORT.json or --project ID (with --url and --api-key)")
    if project is not None:
        if not url or not api_key:
            raise UserError("--project needs --url and --api-key (or LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY)")
        with LabelStudioClient(url, api_key) as client:
            exported = client.export_tasks(project)
        export = run_dir / f"labelstudio-project-{project}.json"  # kept: the report names where labels came from
        export.write_text(json.dumps(exported, ensure_ascii=False, indent=1), encoding="utf-8")
    assert export is not None
    section = import_review(run_dir, export)
    line = (f"{section['n_reviewed']} reviewed row(s), {section['n_changed']} label(s) changed; "
            f"output rewritten: {plan.out_path}")
    if section.get("accuracy_after") is not None:
        line += f"; accuracy {section['accuracy_before']} → {section['accuracy_after']}"
    out.print(line)
