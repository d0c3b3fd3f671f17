"""The command line: `autoannotator label DATA --task "..."` and friends."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from autoannotator.cli.common import console, summary
from autoannotator.errors import UserError
from autoannotator.task import parse_labels

# Library progress bars (weights loading) would interleave with ours.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Label text data with a small-model ensemble orchestrated by an LLM (AutoAnnotator).")
_RESUME_FROM_RUN_DIR = "\0run-dir"


def _version(value: bool) -> None:
    if value:
        from autoannotator import __version__

        typer.echo(f"autoannotator {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Label text data with a small-model ensemble orchestrated by an LLM (AutoAnnotator).

    Exit codes: 0 done, 2 user error (bad input or options), 130 interrupted (resume with --resume),
    anything else a bug (details in ~/.cache/autoannotator/last-error.log).
    """


@app.command()
def label(
    data: Optional[Path] = typer.Argument(None, help="CSV, TSV, JSONL, JSON or Parquet file to label, or a folder "
                                          "or quoted glob of such shards (gzip/bz2/xz/zstd read by content)."),
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
    sandbox: Optional[str] = typer.Option(None, help="Where generated deployment code runs: auto (docker, else "
                                                     "bubblewrap, else in-process with no LLM-written code), docker, "
                                                     "local (bubblewrap), none (in-process), or unsafe-local "
                                                     "(generated code NOT isolated)."),
    llm_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint (default: embedded SmolLM2)."),
    llm_model: Optional[str] = typer.Option(None, help="Model name at that endpoint."),
    out: Optional[Path] = typer.Option(None, help="Output file (default: RUN_DIR/<name>.labelled.<ext>)."),
    run_dir: Optional[Path] = typer.Option(None, help="Where the run keeps its state and report."),
    resume: Optional[str] = typer.Option(None, "--resume", metavar="[RUN_DIR]",
                                         help="Continue a stopped run (RUN_DIR, or the --run-dir given)."),
    config: Optional[Path] = typer.Option(None, help="TOML config file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Every event and library log line too."),
    log_format: str = typer.Option("text", "--log-format", metavar="[text|json]",
                                   help="json: one JSON object per event on stderr, the summary as JSON on stdout."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Label nothing: print the estimated LLM calls, tokens, "
                                                          "cost and time (as `autoannotator plan`)."),
    verifier: Optional[str] = typer.Option(None, metavar="[llm|human]", help="Who verifies the hard samples: llm "
                                           "(default) or human (you, in the terminal); --resume keeps the run's."),
    switch_llm: bool = typer.Option(False, "--switch-llm", help="With --resume: go on with the LLM given now "
                                    "instead of the run's own (the report lists both)."),
    engine: Optional[str] = typer.Option(None, metavar="[local|ray]", help="Where the ensemble runs: local (this "
                                         "process, default) or ray (an actor pool per frozen model)."),
    ray_address: Optional[str] = typer.Option(None, help="With --engine ray: host:port of a Ray cluster, or auto "
                                              "(the cluster this machine belongs to); default: start a local one."),
    routing: Optional[str] = typer.Option(None, help="Which rows go to the LLM: calibrated (default: when it is "
                                                     "expected to make the label likelier right) or paper (U >= epsilon)."),
    llm_budget: Optional[float] = typer.Option(None, help="Most rows sent to the LLM, as a share (0.1 = 10 %). Default: the share "
                                               "the paper's rule would ask; 1 lifts the cap."),
    max_llm_cost: Optional[float] = typer.Option(None, help="Most USD spent on LLM calls (at the price table)."),
    target_accuracy: Optional[str] = typer.Option(None, metavar="[A|llm]", help="Ask the LLM only as much as "
                                                  "the labels need to be expected this accurate (A in (0, 1], or "
                                                  "llm: the LLM's assumed accuracy); default: no target."),
    audit: Optional[int] = typer.Option(None, help="Settled rows also sent to the LLM to estimate label quality "
                                                   "without gold (default min(100, 2 %); 0 = off)."),
    few_shot: Optional[int] = typer.Option(None, "--few-shot", metavar="N", help="Show the LLM N rows labelled "
                                           "earlier, nearest to each hard row and balanced across labels "
                                           "(default 0: zero-shot)."),
) -> None:
    """Label DATA: the SLM ensemble votes, the LLM re-verifies disagreements, the student learns from them."""
    from autoannotator import api
    from autoannotator.cli.logs import event_sink, setup_logging
    from autoannotator.verify.human import human_hooks

    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format)
    overrides = {
        "k": k, "epsilon": epsilon, "beta": beta, "batch_size": batch_size, "sandbox": sandbox,
        "llm_base_url": llm_base_url, "engine": engine, "ray_address": ray_address,
        "routing": routing, "llm_budget": llm_budget, "max_llm_cost": max_llm_cost, "audit": audit,
        "target_accuracy": target_accuracy,
        "few_shot": few_shot, "llm_model": llm_model, "models": [m.strip() for m in models.split(",") if m.strip()] if models else None,
    }
    if dry_run:
        if data is None or not task:
            raise UserError("--dry-run needs DATA and --task (and --labels)")
        _print_estimate(api.plan(data, task, labels, text_column=text_column, verifier=verifier or "llm",
                                 config=config, **overrides), log_format)
        return
    if resume is not None:
        run_dir = run_dir if resume == _RESUME_FROM_RUN_DIR else Path(resume)
    elif data is None:
        raise UserError("give the data file to label: autoannotator label DATA --task \"...\"")
    with event_sink(console, quiet=quiet, verbose=verbose, fmt=log_format) as progress:
        hooks = human_hooks(verifier, run_dir if resume is not None else None, console,
                            getattr(progress, "progress", None))
        common = {"verifier": hooks.get("verifier_factory"), "verifier_info": hooks.get("verifier_info"),
                  "config": config, "on_progress": progress, **overrides}
        if resume is not None:
            result = api.resume(run_dir, out=out, switch_llm=switch_llm, **common)
        else:
            result = api.label(data, task, parse_labels(labels) if labels else None, text_column=text_column,
                               gold_column=gold_column, out=out, run_dir=run_dir, **common)
    summary(result.report.model_dump(), result.run_dir, fmt=log_format)


def _print_estimate(estimate, fmt: str) -> None:
    from autoannotator.plan_estimate import summary_lines

    if fmt == "json":
        typer.echo(estimate.model_dump_json())
        return
    for line in summary_lines(estimate):
        typer.echo(line)
    for note in estimate.assumptions:
        typer.echo(f"  assumption: {note}")


@app.command()
def plan(
    data: Path = typer.Argument(..., help="CSV, TSV, JSONL, JSON or Parquet file the run would label."),
    task: str = typer.Option(..., "--task", help="What to label, in plain words."),
    labels: str = typer.Option(..., help="Comma-separated label set (name or name:description)."),
    text_column: Optional[str] = typer.Option(None, help="Column holding the text (default: 'text')."),
    k: Optional[int] = typer.Option(None, help="Number of small models."),
    epsilon: Optional[float] = typer.Option(None, help="Uncertainty threshold the run would use."),
    beta: Optional[int] = typer.Option(None, help="Fine-tuning pool size the run would use."),
    models: Optional[str] = typer.Option(None, help="Comma-separated model specs."),
    llm_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint the run would use."),
    llm_model: Optional[str] = typer.Option(None, help="Model name at that endpoint."),
    verifier: str = typer.Option("llm", metavar="[llm|human|simulated]", help="Who would verify the hard samples."),
    pilot_rows: int = typer.Option(300, min=10, help="Rows the SLMs label to measure the hard share."),
    log_format: str = typer.Option("text", "--log-format", metavar="[text|json]", help="json: the estimate as JSON."),
    config: Optional[Path] = typer.Option(None, help="TOML config file."),
) -> None:
    """Estimate a run's LLM calls, tokens, cost and wall time from a pilot sample; labels nothing."""
    from autoannotator import api
    from autoannotator.cli.logs import setup_logging

    setup_logging(verbose=False, quiet=True, fmt=log_format)
    estimate = api.plan(data, task, labels, text_column=text_column, verifier=verifier, pilot_rows=pilot_rows,
                        config=config, k=k, epsilon=epsilon, beta=beta, llm_base_url=llm_base_url,
                        llm_model=llm_model,
                        models=[m.strip() for m in models.split(",") if m.strip()] if models else None)
    _print_estimate(estimate, log_format)


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
    few_shot: Optional[int] = typer.Option(None, "--few-shot", metavar="N", help="Few-shot examples per LLM "
                                           "verification prompt (default 0)."),
) -> None:
    """Compare each SLM, their majority vote, the LLM alone and AutoAnnotator on labelled data."""
    from autoannotator import api

    result = api.bench(
        data, task, gold_column, parse_labels(labels) if labels else None, text_column=text_column,
        verifier=verifier, epsilons=_floats(epsilon, "epsilon"), betas=_floats(beta, "beta", int) if beta else None,
        out_dir=out_dir, trajectory=not no_trajectory, include_llm_only=not no_llm_only, config=config,
        routings=[r.strip() for r in routing.split(",") if r.strip()],
        budgets=_floats(llm_budget, "llm-budget") if llm_budget else [],
        max_llm_cost=max_llm_cost, audit=audit,
        on_progress=lambda msg: console.print(f"[dim]bench[/] {msg}"),
        command=" ".join(["autoannotator", *sys.argv[1:]]),
        k=k, batch_size=batch_size, sandbox=sandbox, llm_base_url=llm_base_url, llm_model=llm_model, few_shot=few_shot,
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
    )
    for row in result.rows:
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


_terminated = False


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (kill, a scheduler, docker stop) is handled like Ctrl-C: answers in flight are stored,
    the run stops resumably, rc 143 (128 + 15) says which signal it was."""
    global _terminated
    _terminated = True
    raise KeyboardInterrupt


def main() -> None:
    global _terminated
    _terminated = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _main()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main() -> None:
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
        what = "terminated (SIGTERM)" if _terminated else "interrupted"
        console.print(f"[yellow]{what}[/]: answers received so far are kept; resume with "
                      "`autoannotator label --resume RUN_DIR`", highlight=False)
        sys.exit(143 if _terminated else 130)
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
