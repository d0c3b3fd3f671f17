"""`autoannotator runs ...`: look into past runs (list, report, generated code, one row), resume one, and
round-trip its hard rows through Label Studio. Everything is read from the run directory; only
`resume` and `import-labelstudio` change it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
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

runs_app = typer.Typer(no_args_is_help=True, help="Past runs: list, report, code, one row, resume, Label Studio.")
out = Console(highlight=False)  # results go to stdout; the shared CLI console (stderr) carries progress

_RUNS_DIR = typer.Option(None, "--runs-dir", help="Where runs live (default: settings.runs_dir, ./runs).")
_CONFIG = typer.Option(None, help="TOML config file.")


def _settings(runs_dir: Optional[Path], config: Optional[Path]) -> Settings:
    return load_settings({"runs_dir": runs_dir}, config)


def resolve_run(ref: str, runs_dir: Path) -> Path:
    """RUN as a run directory path, a run id under runs_dir, or an unambiguous prefix (else part) of one."""
    for candidate in (Path(ref), runs_dir / ref):
        if (candidate / "run.json").is_file():
            return candidate
    runs = sorted(p for p in runs_dir.iterdir() if (p / "run.json").is_file()) if runs_dir.is_dir() else []
    found = [p for p in runs if p.name.startswith(ref)] or [p for p in runs if ref in p.name]
    if len(found) == 1:
        return found[0]
    if found:
        raise UserError(f"'{ref}' matches {len(found)} runs ({', '.join(p.name for p in found[:4])}"
                        f"{', ...' if len(found) > 4 else ''}); give more of the id")
    raise UserError(f"no run '{ref}' in {runs_dir} (see `autoannotator runs list`)")


def _db_read(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read without creating anything: a missing file or table reads as no rows."""
    if not path.is_file():
        return []
    try:
        with closing(sqlite3.connect(path, timeout=30)) as conn:
            return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []


def run_state(run_dir: Path, plan: Any) -> dict[str, Any]:
    """Rows done and total, whether the run finished, its report (if any) and LLM calls so far."""
    try:
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet (or cut short by a crash while written): not finished
        report = None
    done = (_db_read(run_dir / "run.sqlite", "SELECT COUNT(*) FROM results") or [(0,)])[0][0]
    total = report["n_samples"] if report else _checkpoint_rows(run_dir, plan.run_id)
    calls = report["llm_calls"] if report else \
        (_db_read(run_dir / "llm_cache.sqlite", "SELECT COUNT(*) FROM verify_cache WHERE paid_by_run = ?",
                  (plan.run_id,)) or [(None,)])[0][0]
    return {"done": done, "total": total, "finished": report is not None and done == total, "report": report,
            "llm_calls": calls}


def _checkpoint_rows(run_dir: Path, run_id: str) -> int | None:
    # Before the report exists, only the graph's checkpoint knows the row count without reading the data file.
    if not (run_dir / "checkpoints.sqlite").is_file():
        return None
    from langgraph.checkpoint.sqlite import SqliteSaver

    try:
        with SqliteSaver.from_conn_string(str(run_dir / "checkpoints.sqlite")) as saver:
            found = saver.get_tuple({"configurable": {"thread_id": run_id}})
    except Exception:  # a damaged checkpoint only costs the total in a listing
        return None
    return found.checkpoint["channel_values"].get("n_rows") if found else None


def _load(run: str, runs_dir: Optional[Path], config: Optional[Path]) -> tuple[Path, Any, Settings]:
    from autoannotator.runner import RunPlan

    settings = _settings(runs_dir, config)
    run_dir = resolve_run(run, settings.runs_dir)
    try:
        return run_dir, RunPlan.load(run_dir), settings
    except ValueError as exc:  # pydantic: a run.json from another version or hand-edited
        raise UserError(f"{run_dir / 'run.json'} is unreadable: {str(exc).splitlines()[0]}") from None


@runs_app.command("list")
def list_runs(runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """Every run under the runs directory, oldest first."""
    root = _settings(runs_dir, config).runs_dir
    dirs = sorted(p for p in root.iterdir() if (p / "run.json").is_file()) if root.is_dir() else []
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
    from autoannotator.runner import RunPlan

    try:
        plan = RunPlan.load(run_dir)
    except ValueError:
        return [run_dir.name, "", "", "", "", "", "unreadable run.json"]
    st = run_state(run_dir, plan)
    report = st["report"] or {}
    acc = "" if report.get("accuracy") is None else f"{report['accuracy']:.4f}"
    review = report.get("human_reviewed")
    if review and review.get("accuracy_before") is not None:
        acc = f"{review['accuracy_before']:.4f} → {acc}"
    status = "finished" if st["finished"] else f"stopped at row {st['done']}"
    if review:
        status += f", {review['n_rows_human_reviewed']} reviewed"
    created = datetime.fromisoformat(plan.created_at).astimezone().strftime("%Y-%m-%d %H:%M")
    return [run_dir.name, created, Path(plan.data_path).name,
            f"{st['done']}/{st['total'] if st['total'] is not None else '?'}",
            "" if st["llm_calls"] is None else str(st["llm_calls"]), acc, status]


@runs_app.command()
def show(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
         as_json: bool = typer.Option(False, "--json", help="Print report.json."),
         runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """The run's report."""
    run_dir, plan, _ = _load(run, runs_dir, config)
    if not (run_dir / "report.json").is_file():
        raise UserError(f"run {plan.run_id} has no report yet (stopped at row {run_state(run_dir, plan)['done']}); "
                        f"finish it: autoannotator runs resume {plan.run_id}")
    if as_json:
        typer.echo((run_dir / "report.json").read_text(encoding="utf-8"))
        return
    from autoannotator.report import render_markdown

    md = run_dir / "report.md"
    text = md.read_text(encoding="utf-8") if md.is_file() else \
        render_markdown(json.loads((run_dir / "report.json").read_text(encoding="utf-8")))
    out.print(Markdown(text))


def _versions(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(r"v(\d+)\.py", p.name))]
    return sorted(found)


@runs_app.command()
def code(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
         model: Optional[str] = typer.Argument(None, help="Only this model's (or the ensemble's) code."),
         runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """The run's generated deployment code, every version, with its sandbox smoke test."""
    run_dir, plan, _ = _load(run, runs_dir, config)
    deploy = run_dir / "deploy"
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
        versions = _versions(folder)
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
    from autoannotator.store import RunStore

    run_dir, plan, settings = _load(run, runs_dir, config)
    st = run_state(run_dir, plan)
    if row < 0 or (st["total"] is not None and row >= st["total"]):
        raise UserError(f"row {row} is not in run {plan.run_id} (rows 0..{(st['total'] or 1) - 1})")
    store = RunStore(run_dir / "run.sqlite")
    try:
        rec = store.result(row)
    finally:
        store.close()
    if rec is None:
        raise UserError(f"row {row} is not labelled yet: run {plan.run_id} stopped at row {st['done']}")
    text, gold = _row_text(plan, row)
    out.rule(f"run {plan.run_id} · row {row}")
    out.print(Panel(Text(text or "(empty)"), expand=False))
    votes = Table("model", "vote", "p")
    for name, vote in rec["votes"].items():
        votes.add_row(name, vote.get("label") or "[dim]abstains[/]", "" if vote.get("p") is None else f"{vote['p']:.4f}")
    out.print(votes)
    out.print(f"U: {'-' if rec['uncertainty'] is None else round(rec['uncertainty'], 4)}   "
              f"route: {rec['label_source']}   SLM majority: {rec['majority'] or '-'}")
    out.print(Text("verifier: ") + _answer(run_dir, plan, settings, text, rec))
    out.print(Text("final label: ") + Text(str(rec["label"]), style="bold"))
    if plan.gold_column:
        mark = "" if gold is None else (" ✓" if gold == rec["label"] else " ✗")
        out.print(f"gold ({plan.gold_column}): {gold if gold is not None else 'unknown'}{mark}")


def _row_text(plan: Any, row: int) -> tuple[str, str | None]:
    """Text and gold from the data file; if it is gone or changed, the text from the run's output file."""
    from autoannotator.data import load_dataset
    from autoannotator.labelstudio import load_run_dataset

    try:
        ds = load_run_dataset(plan)
        return ds.texts[row], (ds.gold[row] if ds.gold else None)
    except UserError as first:
        if not Path(plan.out_path).is_file():
            raise first from None
        ds = load_dataset(plan.out_path, plan.task.text_column, None)
        frame = ds.frame
        # write_labelled renames an input column that clashes with its own output columns.
        gold_col = next((c for c in (plan.gold_column, f"input_{plan.gold_column}") if c in frame.columns
                         and c not in ("label", "label_source", "uncertainty", "votes")), None)
        return ds.texts[row], (str(frame[gold_col].iloc[row]) or None) if gold_col else None


def _answer(run_dir: Path, plan: Any, settings: Settings, text: str, rec: dict) -> Text:
    """The verifier's answer for the row, from the store and the run's answer cache (who paid, tokens)."""
    from autoannotator.agent.human import HUMAN, human_key
    from autoannotator.agent.verifier import Verifier, VerifyPrompt

    labels, cache = plan.task.label_names, run_dir / "llm_cache.sqlite"
    hkey = human_key(text, labels)
    if _db_read(cache, "SELECT 1 FROM human_skipped WHERE key = ?", (hkey,)):
        return Text("the human skipped this row twice: the models' majority was kept", style="yellow")
    if rec["llm_label"] is None:
        return Text("not asked (the models agreed)" if rec["label_source"] != "skipped_empty" else "not asked (empty)",
                    style="dim")
    prompt = VerifyPrompt(plan.task, settings.llm_max_text_chars)
    keys = {}  # the cache is keyed by prompt: rebuild the key for each verifier that answered in this run dir
    for (model_id,) in _db_read(cache, "SELECT DISTINCT model_id FROM verify_cache"):
        key = hkey if model_id == HUMAN else Verifier._key(  # type: ignore[arg-type]
            SimpleNamespace(model_id=model_id, labels=labels), prompt.messages(text))
        keys[key] = model_id
    hits = [r for key in keys for r in _db_read(
        cache, "SELECT model_id, label, tokens_in, tokens_out, tokens_estimated, paid_by_run FROM verify_cache "
               "WHERE key = ?", (key,))]
    answer = Text(f"{rec['llm_label']!r}", style="bold")
    if not hits:
        return answer + Text(" (no cache record: the verifier keeps none, e.g. a simulated one)", style="dim")
    model_id, _, t_in, t_out, est, payer = hits[0]
    who = "human" if model_id == HUMAN else f"LLM {model_id}"
    paid = "answered for this run" if payer == plan.run_id else f"from the cache (paid by run {payer})"
    tokens = "" if model_id == HUMAN else f", tokens in/out {t_in}/{t_out}{' (estimated)' if est else ''}"
    return Text(f"{who}: ") + answer + Text(f" — {paid}{tokens}", style="dim")


@runs_app.command()
def resume(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
           verifier: Optional[str] = typer.Option(None, help="llm or human (default: what the run started with)."),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary."),
           runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """Continue a stopped run (as `autoannotator label --resume RUN_DIR`)."""
    from autoannotator import runner
    from autoannotator.agent.human import human_hooks
    from autoannotator.cli import _summary, console
    from autoannotator.ui.progress import LabelProgress

    run_dir, plan, settings = _load(run, runs_dir, config)
    if run_state(run_dir, plan)["finished"]:
        console.print(f"run {plan.run_id} is finished; nothing to resume (see `autoannotator runs show`)")
        return
    with LabelProgress(console, quiet=quiet) as progress:
        hooks = human_hooks(verifier, run_dir, console, progress.progress)
        report, used_dir = runner.label(settings, None, run_dir=run_dir, resume=True,  # type: ignore[arg-type]
                                        on_progress=progress, **hooks)
    _summary(report, used_dir)


@runs_app.command("export-labelstudio")
def export_labelstudio(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
                       out_file: Path = typer.Argument(..., metavar="OUT.json", help="Label Studio tasks to write."),
                       all_rows: bool = typer.Option(False, "--all", help="Every row, not only the hard ones."),
                       runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """Write the run's hard rows (or all) as Label Studio tasks, its labels as predictions; print the config."""
    from autoannotator.labelstudio import export_tasks, labeling_config, load_run_dataset
    from autoannotator.store import RunStore

    run_dir, plan, _ = _load(run, runs_dir, config)
    store = RunStore(run_dir / "run.sqlite")
    try:
        results = store.results()
    finally:
        store.close()
    tasks = export_tasks(plan, results, load_run_dataset(plan).texts, all_rows)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(tasks, ensure_ascii=False, indent=2), encoding="utf-8")
    typer.echo(f"wrote {len(tasks)} task(s) to {out_file}; Label Studio labeling config:", err=True)
    typer.echo(labeling_config(plan.task.label_names))


@runs_app.command("import-labelstudio")
def import_labelstudio(run: str = typer.Argument(..., help="Run directory, id or id prefix."),
                       export: Path = typer.Argument(..., metavar="EXPORT.json", help="Label Studio's JSON export."),
                       runs_dir: Optional[Path] = _RUNS_DIR, config: Optional[Path] = _CONFIG) -> None:
    """Take the labels reviewed in Label Studio into the run: store, output file and report."""
    from autoannotator.labelstudio import import_review

    run_dir, plan, _ = _load(run, runs_dir, config)
    section = import_review(run_dir, export)
    line = (f"{section['n_reviewed']} reviewed row(s), {section['n_changed']} label(s) changed; "
            f"output rewritten: {plan.out_path}")
    if section.get("accuracy_after") is not None:
        line += f"; accuracy {section['accuracy_before']} → {section['accuracy_after']}"
    out.print(line)
