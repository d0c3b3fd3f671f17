"""Tools that act on labelling runs, for the chat: start one, ask how it goes, why a row went to the LLM,
its deployment code, the parameters of the next run, resume one; and the loop's own steps on a run's
rows: ``run_ensemble``, ``verify_samples``, ``launch_finetune`` (the functions the annotation graph's
nodes call, in ``engine/steps.py``).

They share a ``LoopContext``: the current run and the parameters set for the next one (the chat graph
keeps both in its checkpointed state and hands them in before each tool call). Row and code logic is
``run/inspect.py``'s, so `autoannotator runs sample` and `explain_row` can never disagree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator

from autoannotator.config import Settings
from autoannotator.data import SUPPORTED, RowTexts
from autoannotator.errors import UserError
from autoannotator.run.counters import RunCounters
from autoannotator.run.inspect import code_versions, deploy_folders, read_report, resolve_run, row_answer, row_text, \
    run_state
from autoannotator.run.paths import RunPaths
from autoannotator.run.plan import RunPlan, open_run_source
from autoannotator.run.store import RunStore
from autoannotator.slm.base import SLM
from autoannotator.task import TaskSpec, parse_labels
from autoannotator.tools.base import ToolException, make_tool
from autoannotator.verify.base import Verifier

PARAMS = ("epsilon", "beta", "k")
_ALIASES = {"ε": "epsilon", "eps": "epsilon", "β": "beta"}


VerifierFactory = Callable[[TaskSpec, Path, str], Verifier]
LabelFn = Callable[..., tuple[dict[str, Any], Path]]  # runner.label's signature


@dataclass
class LoopContext:
    settings: Settings
    # runner.label, handed in by whoever builds the chat (the CLI): tools must not import the runner,
    # which plans through the tool registry that lists these tools.
    label: LabelFn | None = None
    current_run: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)  # set_parameter's values, for the next run
    # Tests (and the scripted terminal chat) verify with a stand-in: runner.label then starts no LLM.
    verifier_factory: VerifierFactory | None = None
    verifier_info: dict[str, Any] | None = None
    on_event: Callable[[dict], None] = lambda event: None  # where events go outside a graph run
    # The LLM the chat talks to, for verify_samples (None: start the configured one when needed).
    llm: Any = None
    models: dict[str, list[SLM]] = field(default_factory=dict)  # run dir -> its models, loaded once
    resources: ExitStack = field(default_factory=ExitStack)  # what the tools started (an LLM server)

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
    out: str | None = Field(None, description="file to write the labelled rows to, if the user names one (CSV, TSV, "
                                              "JSONL, JSON or Parquet; default: inside the run directory)")
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


def _label(ctx: LoopContext, settings: Settings, data: Path | None, **kw: Any) -> RunSummary:
    if ctx.label is None:
        raise ToolException("this session cannot start runs (no labelling function was given to its tools)")
    counters = RunCounters(settings, ctx.sink())
    factory = None
    if ctx.verifier_factory is not None:
        def factory(task: TaskSpec, run_dir: Path, run_id: str) -> Verifier:
            counters.verifier = ctx.verifier_factory(task, run_dir, run_id)  # type: ignore[misc]
            return counters.verifier
    try:
        report, run_dir = ctx.label(settings, data, on_progress=counters, verifier_factory=factory,
                                    verifier_info=ctx.verifier_info, **kw)
    finally:  # a run that stopped half-way is still the one to ask about, and to resume
        ctx.current_run = counters.run_dir or ctx.current_run
    return _summary(report, run_dir)


def start_labelling(ctx: LoopContext, args: StartArgs) -> RunSummary:
    overrides = {**ctx.params, **{k: checked(k, getattr(args, k)) for k in PARAMS if getattr(args, k) is not None}}
    settings = ctx.settings.model_copy(update=overrides)
    data = Path(args.data_path).expanduser()
    if not data.is_file():
        raise UserError(f"no such data file: {data}")
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.suffix.lower() not in SUPPORTED:  # before the run, not after it
        raise UserError(f"cannot write {out}: the output file must end in one of {', '.join(SUPPORTED)}")
    return _label(ctx, settings, data, instruction=args.task, labels=parse_labels(args.labels) if args.labels
                  else None, gold_column=args.gold_column, text_column=args.text_column, out_path=out)


def resume_run(ctx: LoopContext, args: RunArgs) -> RunSummary:
    run_dir = ctx.run_dir(args.run)
    plan = RunPlan.load(run_dir)
    if run_state(run_dir, plan).finished:
        ctx.current_run = run_dir
        return _summary(read_report(run_dir) or {}, run_dir)
    return _label(ctx, ctx.settings, None, run_dir=run_dir, resume=True)


def run_status(ctx: LoopContext, args: RunArgs) -> StatusResult:
    run_dir = ctx.run_dir(args.run)
    plan = RunPlan.load(run_dir)
    st = run_state(run_dir, plan)  # still running or stopped: what the run's answer cache says it paid for
    report = st.report or {}
    sources = st.label_sources
    settled = sources.get("slm_consensus", 0) + sources.get("llm_verified", 0)
    prices = ctx.settings.prices
    return StatusResult(run_id=plan.run_id, data=Path(plan.data_path).name, rows_done=st.done,
                        rows_total=st.total, finished=st.finished, llm_calls=st.llm_calls or 0,
                        tokens_in=st.tokens_in, tokens_out=st.tokens_out,
                        est_cost_usd=round(prices.cost(st.tokens_in, st.tokens_out), 6), price_model=prices.model,
                        pool_size=st.pool_size, beta=int(plan.settings.get("beta", ctx.settings.beta)),
                        agreement=round(sources.get("slm_consensus", 0) / settled, 4) if settled else None,
                        accuracy=report.get("accuracy"))


def explain_row(ctx: LoopContext, args: RowArgs) -> ExplainResult:
    run_dir = ctx.run_dir(args.run)
    plan = RunPlan.load(run_dir)
    store = RunStore(RunPaths(run_dir).store)
    try:
        rec = store.result(args.row)
    finally:
        store.close()
    if rec is None:
        raise UserError(f"row {args.row} is not labelled in run {plan.run_id}")
    text, gold = row_text(plan, args.row)
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
                         llm_answer=row_answer(run_dir, plan, ctx.settings.llm_max_text_chars, text, rec).line(),
                         final_label=rec["label"], gold=gold if plan.gold_column else None)


def show_code(ctx: LoopContext, args: CodeArgs) -> CodeResult:
    run_dir = ctx.run_dir(args.run)
    plan = RunPlan.load(run_dir)
    if not RunPaths(run_dir).deploy.is_dir():
        return CodeResult(run_id=plan.run_id, note=f"no generated code: the models ran in-process "
                                                   f"({', '.join(plan.model_specs)})")
    folders = deploy_folders(run_dir)
    if args.model:
        folders = [p for p in folders if p.name.startswith(args.model)]
    files = []
    for folder in folders:
        for n, path in code_versions(folder):
            smoke = path.with_name(f"v{n}.smoke.json")
            code = json.loads(smoke.read_text(encoding="utf-8")).get("exit_code") if smoke.is_file() else None
            files.append(CodeFile(model=folder.name, version=n, path=str(path), code=path.read_text(encoding="utf-8"),
                                  smoke_exit_code=code))
    return CodeResult(run_id=plan.run_id, files=files, note=None if files else f"no code for {args.model!r}")


def checked(name: str, value: float) -> float | int:
    """``value`` within the Settings field's own bounds: one rule for the CLI, the config file and the chat."""
    info = Settings.model_fields[name]
    number: float | int = int(value) if name in ("beta", "k") else value
    try:
        # Annotated[(t, *m)] rather than Annotated[t, *m]: the starred form is Python 3.11+ syntax
        field_type = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        return TypeAdapter(field_type).validate_python(number)
    except ValidationError as exc:
        raise ToolException(f"{name}={number}: {exc.errors()[0]['msg']}") from None


def set_parameter(ctx: LoopContext, args: ParamArgs) -> ParamsResult:
    ctx.params[args.name] = checked(args.name, args.value)
    return ParamsResult(params=dict(ctx.params), note="applies to the next start_labelling; a resumed run keeps "
                                                      "the settings it started with (the rest is labelled alike)")


# -- the loop's steps, on a run's rows ---------------------------------------------------------------
MAX_STEP_ROWS = 200  # rows one step call takes: a chat turn, not a run


class RowsArgs(RunArgs):
    rows: list[int] | None = Field(None, description="row ids (0-based positions in the data file)")
    start: int = Field(0, ge=0, description="first row of a slice, when rows is not given")
    stop: int | None = Field(None, ge=0, description="end of the slice (exclusive; default start + 20)")


class EnsembleRow(BaseModel):
    row: int
    text: str
    votes: dict[str, dict[str, Any]]  # model -> {"label", "p"}
    majority: str | None
    uncertainty: float | None
    route: Literal["llm", "accept", "empty"]


class EnsembleResult(BaseModel):
    run_id: str
    epsilon: float
    rows: list[EnsembleRow]
    n_to_llm: int


class VerifiedRow(BaseModel):
    row: int
    label: str
    cached: bool


class VerifyResultSet(BaseModel):
    run_id: str
    verifier: str
    answers: list[VerifiedRow]
    new_calls: int = Field(description="answers paid for by this call (the rest came from the run's cache)")
    pool_size: int


class FinetuneRecord(BaseModel):
    model: str
    n_train: int
    n_holdout: int
    acc_before: float | None
    acc_after: float | None
    accepted: bool
    votes: bool


class FinetuneResult(BaseModel):
    run_id: str
    round: int
    pool_size: int
    records: list[FinetuneRecord]
    note: str


def _empty(texts: dict[int, str]) -> set[int]:
    """The rows among ``texts`` whose text is blank: no model votes on them, no LLM is asked."""
    return {r for r, t in texts.items() if not t.strip()}


def _rows(args: RowsArgs, n_rows: int) -> list[int]:
    ids = list(args.rows) if args.rows else list(range(args.start, args.stop if args.stop is not None
                                                        else args.start + 20))
    bad = [r for r in ids if not 0 <= r < n_rows]
    if bad:
        raise ToolException(f"rows {bad[:5]} are not in the data (rows 0..{n_rows - 1})")
    if len(ids) > MAX_STEP_ROWS:
        raise ToolException(f"{len(ids)} rows: at most {MAX_STEP_ROWS} per call")
    return list(dict.fromkeys(ids))


def _run_models(ctx: LoopContext, run_dir: Path, plan: RunPlan) -> list[SLM]:
    """The run's models in this process (its frozen ones by spec, its students with their accepted weights)."""
    from autoannotator.finetune import load_trained
    from autoannotator.slm.base import TrainableSLM
    from autoannotator.slm.catalog import build_model

    key = str(run_dir)
    if key not in ctx.models:
        settings = ctx.settings.model_copy(update={k: v for k, v in plan.settings.items() if k in ("k", "min_votes")})
        models = [build_model(spec, plan.task, settings) for spec in plan.model_specs]
        store = RunStore(RunPaths(run_dir).store)
        try:
            accepted = {r["model"]: r["weights"] for r in store.finetune_records() if r.get("weights")}
        finally:
            store.close()
        for model in models:
            if isinstance(model, TrainableSLM) and model.name in accepted:
                load_trained(model, Path(accepted[model.name]))
        ctx.models[key] = models
    return ctx.models[key]


def run_ensemble(ctx: LoopContext, args: RowsArgs) -> EnsembleResult:
    from autoannotator.engine.steps import majority_label, row_votes, score_batch
    from autoannotator.ensemble import is_hard

    run_dir = ctx.run_dir(args.run)
    plan = RunPlan.load(run_dir)
    source = open_run_source(plan)
    ids = _rows(args, source.n_rows)
    texts = source.texts_for(ids)
    models = _run_models(ctx, run_dir, plan)
    labels = plan.task.label_names
    batch = score_batch(models, ids, texts.__getitem__, _empty(texts), len(labels),
                        int(plan.settings.get("min_votes", ctx.settings.min_votes)))
    eps = float(plan.settings.get("epsilon", ctx.settings.epsilon))
    rows = []
    for pos, rid in enumerate(ids):
        u = batch["uncertainty"][pos]
        route = "empty" if u is None else "llm" if is_hard(u, eps) else "accept"
        rows.append(EnsembleRow(row=rid, text=texts[rid][:200], votes=row_votes(models, labels, batch, pos),
                                majority=majority_label(labels, batch, pos), uncertainty=u, route=route))
    return EnsembleResult(run_id=plan.run_id, epsilon=eps, rows=rows, n_to_llm=sum(r.route == "llm" for r in rows))


def _verifier(ctx: LoopContext, plan: RunPlan, run_dir: Path) -> Verifier:
    if ctx.verifier_factory is not None:
        return ctx.verifier_factory(plan.task, run_dir, plan.run_id)
    from autoannotator.llm.factory import llm_session
    from autoannotator.verify.factory import make_verifier

    if ctx.llm is None:
        ctx.llm = ctx.resources.enter_context(llm_session(ctx.settings))
    return make_verifier("llm", plan.task, run_dir, plan.run_id, ctx.settings, llm=ctx.llm)


def verify_samples(ctx: LoopContext, args: RowsArgs) -> VerifyResultSet:
    from autoannotator.engine.steps import verify_rows

    run_dir = ctx.run_dir(args.run)
    plan = RunPlan.load(run_dir)
    source = open_run_source(plan)
    rows = _rows(args, source.n_rows)
    texts = source.texts_for(rows)
    empty = _empty(texts)
    ids = [r for r in rows if r not in empty]
    verifier = _verifier(ctx, plan, run_dir)
    before = verifier.ledger().calls
    store = RunStore(RunPaths(run_dir).store)
    try:
        # The same step as the loop's verify node: paid through the run's cache, answers join the pool.
        verified, pool_size = verify_rows(verifier, store, [(r, texts[r]) for r in ids], batch_index=-1)
    finally:
        store.close()
    new_calls = verifier.ledger().calls - before
    answers = [VerifiedRow(row=int(r), label=lbl, cached=False) for r, lbl in verified.items()]
    return VerifyResultSet(run_id=plan.run_id, verifier=verifier.model_id, answers=answers, new_calls=new_calls,
                           pool_size=pool_size)


def launch_finetune(ctx: LoopContext, args: RunArgs) -> FinetuneResult:
    from autoannotator.engine.steps import finetune_trainables

    run_dir = ctx.run_dir(args.run)
    plan = RunPlan.load(run_dir)
    source = open_run_source(plan)
    from autoannotator.config import FinetuneSettings

    frozen = FinetuneSettings.model_validate(plan.settings.get("finetune") or {})  # the run's own recipe
    settings = ctx.settings.model_copy(update={"finetune": frozen, "seed": plan.settings.get("seed", ctx.settings.seed)})
    models = _run_models(ctx, run_dir, plan)
    store = RunStore(RunPaths(run_dir).store)
    try:
        if store.pool_size() < 2:
            raise ToolException(f"the hard-sample pool holds {store.pool_size()} rows: nothing to learn from yet")
        round_ = max((r["round"] for r in store.finetune_records()), default=0) + 1
        pool_texts = RowTexts(source, wanted=lambda: [rid for rid, _ in store.pool()])  # one pass for the pool
        _, pool_size = finetune_trainables(models, store, pool_texts, plan.task.label_names,
                                           settings, round_, RunPaths(run_dir).models, ctx.sink())
        records = [r for r in store.finetune_records() if r["round"] == round_]
    finally:
        store.close()
    if not records:
        raise ToolException(f"run {plan.run_id} has no trainable model ({', '.join(plan.model_specs)})")
    return FinetuneResult(
        run_id=plan.run_id, round=round_, pool_size=pool_size,
        records=[FinetuneRecord(model=r["model"], n_train=r["n_train"], n_holdout=r["n_holdout"],
                                acc_before=r.get("holdout_balanced_acc_before"),
                                acc_after=r.get("holdout_balanced_acc_after"), accepted=r["accepted"],
                                votes=bool(r["votes"])) for r in records],
        note="weights kept only where the held-out score did not drop (the forgetting guard); a stopped run "
             "resumed later goes on from its own checkpointed weights")


_TOOLS: list[tuple[str, Callable[..., Any], type[BaseModel], type[BaseModel], str]] = [
    ("start_labelling", start_labelling, StartArgs, RunSummary,
     "Label a data file: the small models vote, the LLM verifies their disagreements. Long and paid: the user "
     "confirms first. Give the data path and the task in words (\"sentiment\", not the whole request); the label "
     "set and the output file exactly as the user named them; gold column, k, epsilon, beta optional."),
    ("run_status", run_status, RunArgs, StatusResult,
     "How a run goes or went: rows done, LLM calls, tokens, estimated cost, pool size vs beta, agreement."),
    ("explain_row", explain_row, RowArgs, ExplainResult,
     "Why one row went to the LLM (or not): each model's vote and probability, U vs epsilon, the LLM's answer."),
    ("show_code", show_code, CodeArgs, CodeResult, "The run's generated deployment code, every version."),
    ("set_parameter", set_parameter, ParamArgs, ParamsResult,
     "Set epsilon, beta or k for the next run."),
    ("resume_run", resume_run, RunArgs, RunSummary,
     "Continue a stopped run (the current one by default). Long and paid: the user confirms first."),
    ("run_ensemble", run_ensemble, RowsArgs, EnsembleResult,
     "Run the run's small models on some rows (ids, or a slice): each model's vote and probability, U(x) and "
     "where the routing rule sends the row (LLM or accept). Free: no LLM call."),
    ("verify_samples", verify_samples, RowsArgs, VerifyResultSet,
     "Ask the run's verifier (the LLM) to label some rows, paid through the run's answer cache (never twice); "
     "the answers join the hard-sample pool. Paid: the user confirms first."),
    ("launch_finetune", launch_finetune, RunArgs, FinetuneResult,
     "Fine-tune the run's trainable models now on its hard-sample pool, with the forgetting guard; returns "
     "held-out accuracy before/after. Long: the user confirms first."),
]


def make_loop_tools(settings: Any = None, context: Any = None) -> list[BaseTool]:
    """The run tools, sharing ``context`` (a LoopContext; a fresh one when the caller's is another kind)."""
    ctx = context if isinstance(context, LoopContext) else LoopContext(settings)
    return [make_tool(_user_errors(lambda args, fn=fn: fn(ctx, args)), name=name, description=desc,
                      args_schema=args_model, result_model=result, metadata={"loop_context": ctx})
            for name, fn, args_model, result, desc in _TOOLS]
