"""Tools that act on labelling runs, for the chat: start one, ask how it goes, why a row went to the LLM,
its deployment code, the parameters of the next run, resume one.

They share a ``LoopContext``: the current run and the parameters set for the next one (the chat graph
keeps both in its checkpointed state and hands them in before each tool call). Row and code logic is
``cli_runs``'s, so `autoannotator runs sample` and `explain_row` can never disagree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator

from autoannotator.errors import UserError
from autoannotator.tools.base import ToolException, make_tool

PARAMS = ("epsilon", "beta", "k")
_ALIASES = {"ε": "epsilon", "eps": "epsilon", "β": "beta"}


@dataclass
class LoopContext:
    settings: Any  # config.Settings
    current_run: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)  # set_parameter's values, for the next run
    # Tests (and the scripted terminal chat) verify with a stand-in: runner.label then starts no LLM.
    verifier_factory: Callable[[Any, Path, str], Any] | None = None
    verifier_info: dict[str, Any] | None = None
    on_event: Callable[[dict], None] = lambda event: None  # where events go outside a graph run

    def sink(self) -> Callable[[dict], None]:
        """The graph's "custom" stream when a graph runs this tool (live in the trace), else on_event.

        Resolved once, at the tool's start: the runner's own annotation graph, invoked inside the tool,
        would otherwise hand its events to its own (unread) stream.
        """
        from langgraph.config import get_stream_writer

        try:
            return get_stream_writer()
        except RuntimeError:  # called outside a graph: no runnable context
            return self.on_event

    def run_dir(self, ref: str | None) -> Path:
        from autoannotator.cli_runs import resolve_run

        if ref:
            return resolve_run(ref, self.settings.runs_dir)
        if self.current_run is None:
            raise UserError("no run yet in this chat: start one (label DATA for TASK) or name a run")
        return self.current_run


# -- args and results -----------------------------------------------------------------------------
class StartArgs(BaseModel):
    data_path: str = Field(description="CSV, TSV, JSONL, JSON or Parquet file to label")
    task: str = Field(description="what to label, in plain words")
    labels: str | None = Field(None, description="comma-separated label set (default: chosen by the LLM)")
    gold_column: str | None = Field(None, description="column with known labels, to score accuracy")
    text_column: str | None = Field(None, description="column holding the text (default: text)")
    k: int | None = Field(None, description="number of small models")
    epsilon: float | None = Field(None, description="uncertainty threshold: U >= epsilon goes to the LLM")
    beta: int | None = Field(None, description="hard-sample pool size that triggers fine-tuning")


class RunArgs(BaseModel):
    run: str | None = Field(None, description="run id or prefix (default: this chat's current run)")


class RowArgs(RunArgs):
    row: int = Field(description="row id: 0-based position in the data file")


class CodeArgs(RunArgs):
    model: str | None = Field(None, description="only this model's (or the ensemble's) code")


class ParamArgs(BaseModel):
    name: Literal["epsilon", "beta", "k"]
    value: float

    @field_validator("name", mode="before")
    @classmethod
    def _alias(cls, v: Any) -> Any:  # "ε", "eps", "β": what people (and the intent router) write
        return _ALIASES.get(str(v).strip().lower(), str(v).strip().lower())


class RunSummary(BaseModel):
    run_id: str
    run_dir: str
    out_path: str
    rows: int
    llm_calls: int
    llm_call_rate: float
    tokens_in: int
    tokens_out: int
    est_cost_usd: float
    accuracy: float | None = None
    finetune_rounds: list[dict[str, Any]] = []  # round, model, held-out acc before/after, kept


class StatusResult(BaseModel):
    run_id: str
    data: str
    rows_done: int
    rows_total: int | None
    finished: bool
    llm_calls: int
    tokens_in: int
    tokens_out: int
    est_cost_usd: float
    price_model: str
    pool_size: int
    beta: int
    agreement: float | None = Field(description="share of rows the small models settled without the LLM")
    accuracy: float | None = None


class ExplainResult(BaseModel):
    run_id: str
    row: int
    text: str
    votes: dict[str, dict[str, Any]]  # model -> {"label", "p"}
    uncertainty: float | None
    epsilon: float
    route: str  # the row's label_source
    went_to_llm: bool
    reason: str
    llm_answer: str
    final_label: str | None
    gold: str | None = None


class CodeFile(BaseModel):
    model: str
    version: int
    path: str
    code: str
    smoke_exit_code: int | None = None


class CodeResult(BaseModel):
    run_id: str
    files: list[CodeFile] = []
    note: str | None = None


class ParamsResult(BaseModel):
    params: dict[str, float | int]
    note: str


# -- the tools --------------------------------------------------------------------------------------
def _user_errors(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A UserError ("no run 'x'") is the model's to hear and correct, not a crash."""
    def wrapped(args: Any) -> Any:
        try:
            return fn(args)
        except UserError as exc:
            raise ToolException(str(exc)) from None
    return wrapped


def _summary(report: dict, run_dir: Path) -> RunSummary:
    rounds = [{"round": r["round"], "model": r["model"], "acc_before": r.get("holdout_balanced_acc_before"),
               "acc_after": r.get("holdout_balanced_acc_after"), "kept": r["accepted"]} for r in report["finetune_rounds"]]
    return RunSummary(run_id=report["run"]["run_id"], run_dir=str(run_dir), rows=report["n_samples"],
                      llm_calls=report["llm_calls"], llm_call_rate=report["llm_call_rate"],
                      tokens_in=report["llm_tokens_in"], tokens_out=report["llm_tokens_out"],
                      est_cost_usd=report["est_cost_usd"], accuracy=report.get("accuracy"),
                      out_path=report["run"]["out_path"], finetune_rounds=rounds)


def _label(ctx: LoopContext, settings: Any, data: Path | None, **kw: Any) -> RunSummary:
    from autoannotator import runner
    from autoannotator.ui.trace import RunCounters

    counters = RunCounters(settings, ctx.sink())
    factory = None
    if ctx.verifier_factory is not None:
        def factory(task: Any, run_dir: Path, run_id: str) -> Any:
            counters.verifier = ctx.verifier_factory(task, run_dir, run_id)  # type: ignore[misc]
            return counters.verifier
    try:
        report, run_dir = runner.label(settings, data, on_progress=counters, verifier_factory=factory,
                                       verifier_info=ctx.verifier_info, **kw)
    finally:  # a run that stopped half-way is still the one to ask about, and to resume
        ctx.current_run = counters.run_dir or ctx.current_run
    return _summary(report, run_dir)


def start_labelling(ctx: LoopContext, args: StartArgs) -> RunSummary:
    from autoannotator.task import parse_labels

    overrides = {**ctx.params, **{k: checked(k, getattr(args, k)) for k in PARAMS if getattr(args, k) is not None}}
    settings = ctx.settings.model_copy(update=overrides)
    data = Path(args.data_path).expanduser()
    if not data.is_file():
        raise UserError(f"no such data file: {data}")
    return _label(ctx, settings, data, instruction=args.task, labels=parse_labels(args.labels) if args.labels
                  else None, gold_column=args.gold_column, text_column=args.text_column)


def resume_run(ctx: LoopContext, args: RunArgs) -> RunSummary:
    from autoannotator.cli_runs import run_state
    from autoannotator.runner import RunPlan

    run_dir = ctx.run_dir(args.run)
    plan = RunPlan.load(run_dir)
    if run_state(run_dir, plan)["finished"]:
        ctx.current_run = run_dir
        return _summary(json.loads((run_dir / "report.json").read_text(encoding="utf-8")), run_dir)
    return _label(ctx, ctx.settings, None, run_dir=run_dir, resume=True)


def run_status(ctx: LoopContext, args: RunArgs) -> StatusResult:
    from autoannotator.cli_runs import _db_read, run_state
    from autoannotator.runner import RunPlan

    run_dir = ctx.run_dir(args.run)
    plan = RunPlan.load(run_dir)
    st = run_state(run_dir, plan)
    report = st["report"] or {}
    if report:
        calls, t_in, t_out = report["llm_calls"], report["llm_tokens_in"], report["llm_tokens_out"]
    else:  # still running or stopped: what the run's answer cache says it paid for
        calls, t_in, t_out = (_db_read(run_dir / "llm_cache.sqlite", "SELECT COUNT(*), COALESCE(SUM(tokens_in),0), "
                                       "COALESCE(SUM(tokens_out),0) FROM verify_cache WHERE paid_by_run = ?",
                                       (plan.run_id,)) or [(0, 0, 0)])[0]
    sources = dict(_db_read(run_dir / "run.sqlite", "SELECT label_source, COUNT(*) FROM results GROUP BY 1"))
    settled = sources.get("slm_consensus", 0) + sources.get("llm_verified", 0)
    pool = (_db_read(run_dir / "run.sqlite", "SELECT COUNT(*) FROM pool") or [(0,)])[0][0]
    prices = ctx.settings.prices
    return StatusResult(run_id=plan.run_id, data=Path(plan.data_path).name, rows_done=st["done"],
                        rows_total=st["total"], finished=st["finished"], llm_calls=calls, tokens_in=t_in,
                        tokens_out=t_out, est_cost_usd=round(prices.cost(t_in, t_out), 6), price_model=prices.model,
                        pool_size=pool, beta=int(plan.settings.get("beta", ctx.settings.beta)),
                        agreement=round(sources.get("slm_consensus", 0) / settled, 4) if settled else None,
                        accuracy=report.get("accuracy"))


def explain_row(ctx: LoopContext, args: RowArgs) -> ExplainResult:
    from autoannotator.cli_runs import _answer, _row_text
    from autoannotator.runner import RunPlan
    from autoannotator.store import RunStore

    run_dir = ctx.run_dir(args.run)
    plan = RunPlan.load(run_dir)
    store = RunStore(run_dir / "run.sqlite")
    try:
        rec = store.result(args.row)
    finally:
        store.close()
    if rec is None:
        raise UserError(f"row {args.row} is not labelled in run {plan.run_id}")
    text, gold = _row_text(plan, args.row)
    eps, u = float(plan.settings.get("epsilon", ctx.settings.epsilon)), rec["uncertainty"]
    to_llm = rec["llm_label"] is not None
    if u is None:
        reason = "the text is empty: nothing to label"
    elif to_llm:
        reason = f"U = {u:.4f} >= epsilon = {eps:g}: the small models disagreed, so the LLM re-verified it"
    else:
        reason = f"U = {u:.4f} < epsilon = {eps:g}: the small models agreed, so no LLM was asked"
    return ExplainResult(run_id=plan.run_id, row=args.row, text=text, votes=rec["votes"], uncertainty=u, epsilon=eps,
                         route=rec["label_source"], went_to_llm=to_llm, reason=reason,
                         llm_answer=_answer(run_dir, plan, ctx.settings, text, rec).plain,
                         final_label=rec["label"], gold=gold if plan.gold_column else None)


def show_code(ctx: LoopContext, args: CodeArgs) -> CodeResult:
    from autoannotator.cli_runs import _versions
    from autoannotator.runner import RunPlan

    run_dir = ctx.run_dir(args.run)
    plan = RunPlan.load(run_dir)
    deploy = run_dir / "deploy"
    if not deploy.is_dir():
        return CodeResult(run_id=plan.run_id, note=f"no generated code: the models ran in-process "
                                                   f"({', '.join(plan.model_specs)})")
    folders = sorted(p for p in deploy.iterdir() if p.is_dir())
    if args.model:
        folders = [p for p in folders if p.name.startswith(args.model)]
    files = []
    for folder in folders:
        for n, path in _versions(folder):
            smoke = path.with_name(f"v{n}.smoke.json")
            code = json.loads(smoke.read_text(encoding="utf-8")).get("exit_code") if smoke.is_file() else None
            files.append(CodeFile(model=folder.name, version=n, path=str(path), code=path.read_text(encoding="utf-8"),
                                  smoke_exit_code=code))
    return CodeResult(run_id=plan.run_id, files=files, note=None if files else f"no code for {args.model!r}")


def checked(name: str, value: float) -> float | int:
    """``value`` within the Settings field's own bounds: one rule for the CLI, the config file and the chat."""
    from autoannotator.config import Settings

    info = Settings.model_fields[name]
    number: float | int = int(value) if name in ("beta", "k") else value
    try:
        return TypeAdapter(Annotated[info.annotation, *info.metadata]).validate_python(number)
    except ValidationError as exc:
        raise ToolException(f"{name}={number}: {exc.errors()[0]['msg']}") from None


def set_parameter(ctx: LoopContext, args: ParamArgs) -> ParamsResult:
    ctx.params[args.name] = checked(args.name, args.value)
    return ParamsResult(params=dict(ctx.params), note="applies to the next start_labelling; a resumed run keeps "
                                                      "the settings it started with (the rest is labelled alike)")


_TOOLS: list[tuple[str, Callable[..., Any], type[BaseModel], type[BaseModel], str]] = [
    ("start_labelling", start_labelling, StartArgs, RunSummary,
     "Label a data file: the small models vote, the LLM verifies their disagreements. Long and paid: the user "
     "confirms first. Give the data path and the task in words; labels, gold column, k, epsilon, beta optional."),
    ("run_status", run_status, RunArgs, StatusResult,
     "How a run goes or went: rows done, LLM calls, tokens, estimated cost, pool size vs beta, agreement."),
    ("explain_row", explain_row, RowArgs, ExplainResult,
     "Why one row went to the LLM (or not): each model's vote and probability, U vs epsilon, the LLM's answer."),
    ("show_code", show_code, CodeArgs, CodeResult, "The run's generated deployment code, every version."),
    ("set_parameter", set_parameter, ParamArgs, ParamsResult,
     "Set epsilon, beta or k for the next run."),
    ("resume_run", resume_run, RunArgs, RunSummary,
     "Continue a stopped run (the current one by default). Long and paid: the user confirms first."),
]


def make_loop_tools(settings: Any, context: Any = None) -> list[BaseTool]:
    """The run tools, sharing ``context`` (a LoopContext; a fresh one when the caller's is another kind)."""
    ctx = context if isinstance(context, LoopContext) else LoopContext(settings)
    return [make_tool(_user_errors(lambda args, fn=fn: fn(ctx, args)), name=name, description=desc,
                      args_schema=args_model, result_model=result, metadata={"loop_context": ctx})
            for name, fn, args_model, result, desc in _TOOLS]
