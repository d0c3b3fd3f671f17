"""The command line: `autoannotator label DATA --task "..."` and friends."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from autoannotator.cli.common import console, summary
from autoannotator.config import load_settings
from autoannotator.errors import UserError
from autoannotator.task import parse_labels

# Library progress bars (weights loading) would interleave with ours.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Label text data with a small-model ensemble orchestrated by an LLM (AutoAnnotator).")
_RESUME_FROM_RUN_DIR = "\0run-dir"


@app.callback()
def _root() -> None:
    """Keeps `label` a subcommand even while it is the only one."""


@app.command()
def label(
    data: Optional[Path] = typer.Argument(None, help="CSV, TSV, JSONL, JSON or Parquet file to label."),
    task: Optional[str] = typer.Option(None, "--task", help='What to label, in plain words.'),
    labels: Optional[str] = typer.Option(None, help="Comma-separated label set (name or name:description)."),
    text_column: Optional[str] = typer.Option(None, help="Column holding the text (default: 'text')."),
    gold_column: Optional[str] = typer.Option(None, help="Column with known labels: the report scores accuracy."),
    k: Optional[int] = typer.Option(None, help="Number of small models in the ensemble (paper: 3)."),
    epsilon: Optional[float] = typer.Option(None, help="Uncertainty threshold: U >= epsilon goes to the LLM."),
    beta: Optional[int] = typer.Option(None, help="Hard-sample pool size that triggers fine-tuning (paper: 2000)."),
    models: Optional[str] = typer.Option(None, help="Comma-separated model specs (vader, textblob, afinn, "
                                                    "profanity, student, hf:<id or path>)."),
    batch_size: Optional[int] = typer.Option(None, help="Rows per batch."),
    sandbox: Optional[str] = typer.Option(None, help="Where generated deployment code runs: auto, docker, local "
                                                     "(bubblewrap) or none (in-process)."),
    llm_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint (default: embedded SmolLM2)."),
    llm_model: Optional[str] = typer.Option(None, help="Model name at that endpoint."),
    out: Optional[Path] = typer.Option(None, help="Output file (default: RUN_DIR/<name>.labelled.<ext>)."),
    run_dir: Optional[Path] = typer.Option(None, help="Where the run keeps its state and report."),
    resume: Optional[str] = typer.Option(None, "--resume", metavar="[RUN_DIR]",
                                         help="Continue a stopped run (RUN_DIR, or the --run-dir given)."),
    config: Optional[Path] = typer.Option(None, help="TOML config file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary."),
    verifier: Optional[str] = typer.Option(None, metavar="[llm|human]", help="Who verifies the hard samples: llm "
                                           "(default) or human (you, in the terminal); --resume keeps the run's."),
    routing: Optional[str] = typer.Option(None, help="Which rows go to the LLM: calibrated (default: when it is "
                                                     "expected to make the label likelier right) or paper (U >= epsilon)."),
    llm_budget: Optional[float] = typer.Option(None, help="Most rows sent to the LLM, as a share (0.1 = 10 %)."),
    max_llm_cost: Optional[float] = typer.Option(None, help="Most USD spent on LLM calls (at the price table)."),
    audit: Optional[int] = typer.Option(None, help="Settled rows also sent to the LLM to estimate label quality "
                                                   "without gold (default min(100, 2 %); 0 = off)."),
) -> None:
    """Label DATA: the SLM ensemble votes, the LLM re-verifies disagreements, the student learns from them."""
    from autoannotator import runner
    from autoannotator.verify.human import human_hooks
    from autoannotator.cli.progress import LabelProgress

    settings = load_settings({
        "k": k, "epsilon": epsilon, "beta": beta, "batch_size": batch_size, "sandbox": sandbox,
        "llm_base_url": llm_base_url, "routing": routing, "llm_budget": llm_budget, "max_llm_cost": max_llm_cost,
        "audit": audit,
        "llm_model": llm_model, "models": [m.strip() for m in models.split(",") if m.strip()] if models else None,
    }, config)
    if resume is not None:
        run_dir = run_dir if resume == _RESUME_FROM_RUN_DIR else Path(resume)
    elif data is None:
        raise UserError("give the data file to label: autoannotator label DATA --task \"...\"")
    with LabelProgress(console, quiet=quiet) as progress:
        hooks = human_hooks(verifier, run_dir if resume is not None else None, console, progress.progress)
        report, used_dir = runner.label(
            settings, data, instruction=task, labels=parse_labels(labels) if labels else None,
            text_column=text_column, gold_column=gold_column, out_path=out, run_dir=run_dir,
            resume=resume is not None, on_progress=progress, **hooks,
        )
    summary(report, used_dir)


def _floats(raw: str, name: str, cast=float) -> list:
    try:
        return [cast(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--{name} takes comma-separated numbers, got {raw!r}") from None


@app.command()
def bench(
    data: Path = typer.Argument(..., help="Labelled data (CSV, JSONL, JSON or Parquet)."),
    gold_column: str = typer.Option(..., help="Column with the known labels."),
    task: str = typer.Option(..., "--task", help="What to label, in plain words."),
    labels: Optional[str] = typer.Option(None, help="Label set (default: the gold column's values)."),
    text_column: Optional[str] = typer.Option(None, help="Column holding the text."),
    verifier: str = typer.Option("llm", help="llm (the configured or embedded LLM), human, or simulated:P "
                                             "(a seeded stand-in right with probability P: bench only)."),
    epsilon: str = typer.Option("0.000001", help="Comma-separated epsilon values to sweep."),
    beta: Optional[str] = typer.Option(None, help="Comma-separated beta values to sweep (default: settings)."),
    k: Optional[int] = typer.Option(None, help="Number of small models."),
    models: Optional[str] = typer.Option(None, help="Comma-separated model specs."),
    batch_size: Optional[int] = typer.Option(None, help="Rows per batch."),
    llm_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint."),
    llm_model: Optional[str] = typer.Option(None, help="Model name at that endpoint."),
    sandbox: Optional[str] = typer.Option(None, help="Where the frozen SLMs run: auto, docker, local or none."),
    no_llm_only: bool = typer.Option(False, "--no-llm-only", help="Skip the llm_only baseline (slow on CPU)."),
    no_trajectory: bool = typer.Option(False, "--no-trajectory", help="Skip per-round SLM evaluation."),
    out_dir: Path = typer.Option(Path("bench-results"), help="Where results.json/.md and tradeoff.png go."),
    config: Optional[Path] = typer.Option(None, help="TOML config file."),
    routing: str = typer.Option("paper,calibrated", help="Comma-separated routing rules to run."),
    llm_budget: Optional[str] = typer.Option(None, help="Comma-separated LLM-budget shares: one calibrated run "
                                                        "each (e.g. 0.05,0.1,0.2,0.3)."),
    max_llm_cost: Optional[float] = typer.Option(None, help="Most USD per run spent on LLM calls."),
    audit: Optional[int] = typer.Option(None, help="Audit rows per run (default min(100, 2 %); 0 = off)."),
) -> None:
    """Compare each SLM, their majority vote, the LLM alone and AutoAnnotator on labelled data."""
    from autoannotator.bench.output import write_results
    from autoannotator.bench.suite import run_bench

    settings = load_settings({
        "k": k, "batch_size": batch_size, "sandbox": sandbox, "llm_base_url": llm_base_url, "llm_model": llm_model,
        "models": [m.strip() for m in models.split(",") if m.strip()] if models else None,
        "max_llm_cost": max_llm_cost, "audit": audit,
    }, config)
    rows, trajectory, meta = run_bench(
        settings, data, instruction=task, gold_column=gold_column,
        labels=parse_labels(labels) if labels else None, text_column=text_column, verifier=verifier,
        epsilons=_floats(epsilon, "epsilon"), betas=_floats(beta, "beta", int) if beta else [settings.beta],
        out_dir=out_dir, trajectory=not no_trajectory, include_llm_only=not no_llm_only,
        routings=[r.strip() for r in routing.split(",") if r.strip()],
        budgets=_floats(llm_budget, "llm-budget") if llm_budget else [],
        on_progress=lambda msg: console.print(f"[dim]bench[/] {msg}"),
    )
    meta["command"] = " ".join(["autoannotator", *sys.argv[1:]])
    write_results(rows, trajectory, meta, out_dir)
    for row in rows:
        console.print(f"{row.name:40s} acc {row.accuracy}  calls {row.llm_calls} ({row.llm_call_rate:.1%})  "
                      f"${row.est_cost_usd:.6f}  {row.wall_s}s", highlight=False)
    console.print(f"results: {out_dir / 'results.md'}")


from autoannotator.cli.chat import register as register_chat  # noqa: E402
from autoannotator.cli.runs import runs_app  # noqa: E402  (after the commands: `runs` is listed last)

register_chat(app)

app.add_typer(runs_app, name="runs")


def _resume_value_optional(argv: list[str]) -> list[str]:
    """Let `--resume` stand alone (meaning --run-dir's directory): click options cannot have optional values."""
    out = list(argv)
    if not out or out[0] != "label":  # `chat --resume` and `runs resume` are plain flags
        return out
    for i, token in enumerate(out):
        if token == "--resume" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, _RESUME_FROM_RUN_DIR)
            break
    return out


def main() -> None:
    try:
        rc = app(args=_resume_value_optional(sys.argv[1:]), prog_name="autoannotator", standalone_mode=False)
        # Typer turns Ctrl-C into Exit(130), which standalone_mode=False returns instead of raising.
        if rc == 130:
            raise KeyboardInterrupt
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except UserError as exc:
        console.print(f"[red]error[/]: {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: resume with `autoannotator label --resume RUN_DIR`")
        sys.exit(130)
    except Exception as exc:
        # Typer vendors its own click: recognise its usage errors and exits by shape, not by class.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ in ("Exit", "Abort"):
            sys.exit(getattr(exc, "exit_code", 130))
        log = Path.home() / ".cache" / "autoannotator" / "last-error.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc(), encoding="utf-8")
        console.print(f"[red]internal error[/]: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                      f" (details in {log})", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
