"""One labelling run, start to finish (or resumed): plan, load models, run the annotation graph, report.

The run directory holds everything a resumed run needs: ``run.json`` (the plan: task, models,
settings), ``checkpoints.sqlite`` (LangGraph's SQLite checkpointer), ``run.sqlite`` (per-row
results, hard-sample pool, fine-tuning rounds), ``llm_cache.sqlite`` (every LLM answer paid for)
and ``models/`` (fine-tuned weights).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

from autoannotator.agent.labels import choose_labels
from autoannotator.agent.planning import deployment_spec_for, plan_run, probe_samples
from autoannotator.config import Settings
from autoannotator.data import FINISH_CHUNK_ROWS, DataSource, EmptyRows, RowTexts, default_output_path, open_source
from autoannotator.deploy.codegen import write_deployment_code
from autoannotator.deploy.proxy import DeploymentSpec, SandboxedEnsemble
from autoannotator.engine import make_engine
from autoannotator.errors import LLMUnavailable, UserError
from autoannotator.finetune import load_trained
from autoannotator.graphs.annotate import AnnotateContext, build_annotate_graph, processing_order
from autoannotator.llm.factory import LLMHandle, check_reachable, llm_session
from autoannotator.plan_estimate import (DEFAULT_PILOT_ROWS, PlanEstimate, estimate_for_models, summary_lines,
                                         verifier_kind)
from autoannotator.run.output import ShardWriter, assemble, write_run_output
from autoannotator.run.embeddings import EmbeddingStore
from autoannotator.run.paths import RunPaths
from autoannotator.run.lock import RunLock
from autoannotator.run.plan import (FROZEN_SETTINGS, RunPlan, frozen_settings, new_run_id, open_run_source, record_llm,
                                    resume_inputs, settings_for_resume)
from autoannotator.run.precheck import check_output_writable, check_run_dir_writable
from autoannotator.run.report import EMBEDDED_WARNING, build_report, write_report
from autoannotator.run.tally import tally_run
from autoannotator.run.store import RunStore
from autoannotator.sandbox import fallback_note, get_sandbox
from autoannotator.sandbox.base import SandboxError
from autoannotator.slm.base import SLM, TrainableSLM
from autoannotator.slm.catalog import build_model, default_selection
from autoannotator.task import LabelDef, LabelSource, TaskSpec, build_task
from autoannotator.verify.base import ExampleVerifier, Verifier
from autoannotator.verify.examples import FewShotPicker
from autoannotator.verify.factory import make_verifier

log = logging.getLogger(__name__)

VerifierFactory = Callable[[TaskSpec, Path, str], Verifier]
SAMPLE_ROWS = 1000  # evenly spread rows the planner and the label chooser see (never the whole file)
__all__ = ["RunPlan", "label", "retry_failed", "write_run_output"]


def label(
    settings: Settings,
    data_path: Path,
    *,
    instruction: str | None = None,
    labels: list[LabelDef] | None = None,
    text_column: str | None = None,
    gold_column: str | None = None,
    out_path: Path | None = None,
    run_dir: Path | None = None,
    run_id: str | None = None,
    resume: bool = False,
    on_progress: Callable[[dict], None] = lambda event: None,
    verifier_factory: VerifierFactory | None = None,
    verifier_info: dict[str, Any] | None = None,
    switch_llm: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Label ``data_path``; returns (report, run_dir). Resuming needs only ``run_dir``. ``run_id``: the new
    run's id, when the caller already named ``run_dir`` after it (else one is made).

    ``verifier_factory(task, run_dir, run_id)`` replaces the LLM verifier (the benchmark's, which
    holds its own LLM session or simulates one; ``verifier_info`` describes it for the report); no
    LLM is started here then, so the label set must be given. A resumed run keeps its LLM (run.json
    records it); another one is refused unless ``switch_llm``.
    """
    timings: dict[str, float] = {}
    llm_note: str | None = None
    if resume:
        if run_dir is None:
            raise UserError("--resume needs the run directory: --resume RUN_DIR")
        plan = RunPlan.load(run_dir)
        settings = settings.model_copy(update=frozen_settings(plan.settings))
        if verifier_factory is None:
            settings, llm_note = settings_for_resume(plan, settings, switch_llm=switch_llm)
        data_path = Path(plan.data_path) if data_path is None else data_path
    elif not instruction:
        raise UserError("say what to label: --task \"label these reviews for sentiment\"")

    start = time.perf_counter()
    # One streaming scan (counts, fingerprint, checks); rows are read back chunk by chunk as the loop goes.
    source = open_source(data_path, plan.task.text_column if resume else text_column,
                         plan.gold_column if resume else gold_column, settings.max_text_chars)
    timings["load_data"] = time.perf_counter() - start
    if resume and source.fingerprint != plan.data_fingerprint:
        raise UserError(f"{data_path} has changed since run {plan.run_id} started; resume with the same file")

    if not resume:
        if labels:  # fail on a bad label set before paying for an LLM start
            build_task(instruction, labels, source.text_column)
        run_id = run_id or new_run_id(instruction)
        run_dir = run_dir or settings.runs_dir / run_id
    # Before any LLM call: the run directory and the output must take a file (found at the end, the
    # work and its LLM calls were lost), and no other process may hold this run.
    check_run_dir_writable(run_dir)
    check_output_writable(Path(out_path) if out_path is not None else
                          Path(plan.out_path) if resume else default_output_path(data_path, run_dir))

    with ExitStack() as stack:
        stack.enter_context(RunLock(run_dir))
        if not resume and RunPaths(run_dir).is_run():
            raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
        llm = None
        if verifier_factory is None:
            start = time.perf_counter()
            llm = stack.enter_context(llm_session(settings, log_dir=run_dir))
            check_reachable(llm)
            timings["llm_start"] = time.perf_counter() - start
            if llm.warning:
                source.warnings.append(llm.warning)
        if not resume:
            labels_given = bool(labels)
            task_source = "user (--labels)"
            if not labels:
                if llm is None:
                    raise UserError("a label set is needed when no LLM is started: pass --labels")
                labels, note = choose_labels(llm.chat, instruction, probe_samples(source.sample_texts(SAMPLE_ROWS),
                                                                                  10), weak_llm=llm.embedded)
                task_source = note
                on_progress({"event": "note", "text": note})
                source.warnings.append(note)
            task = build_task(instruction, labels, source.text_column)
            plan = RunPlan(
                run_id=run_id, created_at=datetime.now(timezone.utc).isoformat(), data_path=str(data_path.resolve()),
                data_fingerprint=source.fingerprint, gold_column=gold_column,
                out_path=str(out_path or default_output_path(data_path, run_dir, source.fmt)), task=task,
                model_specs=list(settings.models),
                settings={k: v for k, v in settings.model_dump(mode="json").items() if k in FROZEN_SETTINGS},
                verifier=dict(verifier_info) if verifier_factory is not None and verifier_info else None,
            )
            if llm is not None:
                record_llm(plan, base_url=llm.base_url, model_id=llm.model_id, embedded=llm.embedded,
                           settings=settings)
            start = time.perf_counter()
            _plan_models(plan, settings, source, llm, labels_given=labels_given, task_source=task_source,
                         run_dir=run_dir, on_progress=on_progress)
            timings["plan"] = time.perf_counter() - start
            plan.save(run_dir)
        else:
            if out_path is not None:
                plan.out_path = str(out_path)
            if llm is not None:
                record_llm(plan, base_url=llm.base_url, model_id=llm.model_id, embedded=llm.embedded,
                           settings=settings)
                plan.save(run_dir)  # the LLM record (a switch, or a run made before records existed)
            if llm_note:
                on_progress({"event": "note", "text": llm_note})
                source.warnings.append(llm_note)

        start = time.perf_counter()
        models = _load_models(plan, settings, stack)
        timings["load_models"] = time.perf_counter() - start
        paths = RunPaths(run_dir)
        store = RunStore(paths.store)
        stack.callback(store.close)
        verifier = verifier_factory(plan.task, run_dir, plan.run_id) if verifier_factory else \
            make_verifier("llm", plan.task, run_dir, plan.run_id, settings, llm=llm)
        saver = stack.enter_context(SqliteSaver.from_conn_string(str(paths.checkpoints)))

        llm_info = ({"model_id": llm.model_id, "base_url": llm.base_url, "embedded": llm.embedded,
                     "all": plan.llm.all_labels() if plan.llm else [llm.model_id]} if llm else
                    {"model_id": verifier.model_id, "base_url": None, "embedded": False, **(verifier_info or {})})
        engine = make_engine(settings.engine, models, plan.model_specs, plan.task, settings, source=source,
                             address=settings.ray_address)
        stack.callback(engine.close)
        if settings.engine == "ray":  # the verifier's uncached prompts go out from Ray workers
            from autoannotator.engine.ray_engine import ensure_ray
            from autoannotator.engine.ray_verify import spread_verifier

            asker = spread_verifier(verifier, llm, settings, ensure_ray(settings.ray_address))
            if asker is not None:
                stack.callback(asker.close)
        writer = ShardWriter(paths.labelled, buffer_rows=FINISH_CHUNK_ROWS)
        few_shot = _few_shot_picker(settings, store, paths, plan.task, verifier, stack, on_progress, source.warnings)
        # No list of every text: the pool's rows (what fine-tuning trains on) and the few-shot candidates
        # are read back when needed.
        text_of = RowTexts(source, wanted=lambda: [rid for rid, _ in store.pool()] +
                           (few_shot.wanted() if few_shot is not None else []))
        ctx = AnnotateContext(dataset=None, task=plan.task, models=models, verifier=verifier, store=store,
                              settings=settings, run_dir=run_dir, on_progress=on_progress,
                              empty_rows=EmptyRows(text_of), text_of=text_of, engine=engine, writer=writer,
                              few_shot=few_shot)
        graph = build_annotate_graph(ctx, checkpointer=saver)
        n_rows = source.n_rows
        n_batches = -(-n_rows // settings.batch_size)
        config = {"configurable": {"thread_id": plan.run_id}, "recursion_limit": 10 * n_batches + 50}
        snapshot = graph.get_state(config)
        resumed = bool(snapshot.values)
        estimate = _estimate(run_dir, resumed, models, source, plan.task, settings,
                             kind=verifier_kind(bool(llm and llm.embedded), None if llm else verifier_info or {}),
                             on_progress=on_progress)
        if resumed:
            _restore_weights(models, snapshot.values.get("weights") or {})
            on_progress({"event": "resumed", "rows_done": store.n_results(), "n_rows": n_rows})
        on_progress({"event": "start", "n_rows": n_rows, "rows_done": store.n_results(),
                     "models": [m.name for m in models], "llm": llm_info["model_id"], "run_dir": str(run_dir)})
        graph_start = time.perf_counter()
        try:
            _invoke(graph, config, resumed, snapshot, store, n_rows, settings, models)
        except LLMUnavailable as exc:  # the endpoint is down: nothing answered is lost
            raise LLMUnavailable(f"{exc}; the answers so far are kept: resume with "
                                 f"`autoannotator label --resume {run_dir}`") from None
        final = graph.get_state(config).values
        node_s = final.get("timings", {})
        if not resumed:
            # The share of the loop spent outside the models, the LLM and training: LangGraph's
            # checkpointing, the run store, routing. Only meaningful for a run made in one go.
            wall = time.perf_counter() - graph_start
            # finetune_wait: the loop waiting on an overlapped round is training time, not orchestration
            work = sum(node_s.get(k, 0.0) for k in ("ensemble", "verify", "finetune", "finetune_wait"))
            timings["graph_wall"] = wall
            timings["orchestration_overhead_share"] = max(0.0, 1 - work / wall) if wall else 0.0
        report = _finish(plan, source, store, writer, verifier, settings, models, llm_info, {**timings, **node_s},
                         run_dir, estimate=estimate, decide=final.get("decide_summary"))
    return report, run_dir


def _few_shot_picker(settings: Settings, store: RunStore, paths: RunPaths, task: TaskSpec, verifier: Verifier,
                     stack: ExitStack, on_progress: Callable[[dict], None],
                     warnings: list[str]) -> FewShotPicker | None:
    """``--few-shot N``: the frozen MiniLM encoder and the run's embedding store; None when off or when
    the verifier's prompt cannot show examples (a person, a custom verifier: said once)."""
    if settings.few_shot <= 0:
        return None
    if not isinstance(verifier, ExampleVerifier):
        note = f"--few-shot {settings.few_shot} ignored: the verifier {verifier.model_id} shows no examples"
        on_progress({"event": "note", "text": note})
        warnings.append(note)
        return None
    from autoannotator.slm.student import SentenceEncoder  # torch: loaded only when few-shot is on

    encoder = SentenceEncoder(device=settings.device)
    embeddings = EmbeddingStore(paths.embeddings, encoder.dim)
    stack.callback(embeddings.close)
    return FewShotPicker(settings.few_shot, store, embeddings, encoder.encode, task.label_names,
                         min_confidence=settings.few_shot_min_confidence)


def _invoke(graph: Any, config: dict[str, Any], resumed: bool, snapshot: Any, store: RunStore, n_rows: int,
            settings: Settings, models: list[SLM]) -> None:
    if not resumed:
        graph.invoke({"n_rows": n_rows, "epsilon": settings.epsilon, "beta": settings.beta,
                      "has_trainable": any(isinstance(m, TrainableSLM) for m in models), "cursor": 0,
                      "batch_index": 0, "pool_size": 0, "pool_at_last_finetune": 0, "finetune_round": 0,
                      "weights": {}, "timings": {}}, config, durability="sync")
    else:  # stopped anywhere: go on from where the store says, not from the checkpoint's next step
        order = processing_order(n_rows, settings.seed, settings.finetune.shuffle_rows)
        graph.invoke(resume_inputs(snapshot.values, store, n_rows, order), config, durability="sync")


def _plan_models(plan: RunPlan, settings: Settings, source: DataSource, llm: LLMHandle | None, *, labels_given: bool,
                 task_source: str, run_dir: Path, on_progress: Callable[[dict], None]) -> None:
    """Fill the plan's models and deployment: the user's --models, else the meta-controller's choice."""
    samples = source.sample_texts(SAMPLE_ROWS)
    sandbox = None if settings.sandbox == "none" else get_sandbox(settings.sandbox, gpu=settings.device == "cuda")
    planner_sandbox = sandbox
    if sandbox is not None and not sandbox.runs_generated_code:  # auto found no isolation: in-process
        note = fallback_note(sandbox)
        if note:
            source.warnings.append(note)
        sandbox = None
    plan.sandbox = sandbox.name if sandbox else "none"
    if not plan.model_specs and llm is not None:
        def label_samples(task: TaskSpec, texts: list[str]) -> list[str]:
            # Its own cache namespace: planning calls are counted apart from the annotation's, whose
            # llm_calls then equal its LLM-verified rows exactly.
            probe = make_verifier("llm", task, run_dir, f"{plan.run_id}:plan", settings, llm=llm,
                                  model_id=f"{llm.model_id} (probe)")
            return [r.label or "" for r in probe.verify(list(enumerate(texts)))]

        on_progress({"event": "note", "text": "the meta-controller is choosing and deploying the models"})
        # A weak LLM's label proposals are junk, so the label set chosen for it already stands.
        drafted = plan_run(settings, instruction=plan.task.instruction, task=plan.task,
                           labels_given=labels_given or llm.embedded, task_source=task_source,
                           texts=samples, n_rows=source.n_rows, run_dir=run_dir, chat=llm.chat, weak_llm=llm.embedded,
                           sandbox=planner_sandbox or get_sandbox("auto"), label_samples=label_samples,
                           on_event=on_progress, data_fingerprint=source.fingerprint)
        plan.task = drafted.task
        plan.model_specs = [s["spec"] for s in drafted.selection]
        if sandbox is not None and drafted.deployment:
            plan.deployment_code = drafted.deployment.get("final_code")
            plan.deployment = drafted.deployment.get("spec")
    if not plan.model_specs:
        plan.model_specs = default_selection(plan.task, settings.k)
    if not plan.model_specs:
        raise UserError("no small model can label this task offline; name some with --models")
    if sandbox is not None and plan.deployment_code is None:
        trainable = {s for s in plan.model_specs if build_model(s, plan.task, settings).trainable}
        spec = deployment_spec_for(plan.task, [s for s in plan.model_specs if s not in trainable], settings)
        if spec is not None:
            result = write_deployment_code(spec, run_dir, sandbox, probe_samples(samples))
            if result.final_code is None:
                raise UserError(f"the deployment code failed its smoke test in the {sandbox.name} sandbox: "
                                f"{result.error}")
            plan.deployment_code, plan.deployment = result.final_code, spec.model_dump(mode="json")


def _load_models(plan: RunPlan, settings: Settings, stack: ExitStack) -> list[SLM]:
    """Frozen models from the sandboxed worker (one process, loaded once), trainable ones in-process."""
    served: dict[str, SLM] = {}
    # On Ray the frozen models run on actors built from their specs, so the sandboxed worker is not started.
    if plan.deployment_code and settings.engine != "ray":
        spec = DeploymentSpec.model_validate(plan.deployment)
        sandbox = get_sandbox(plan.sandbox, gpu=settings.device == "cuda")
        try:
            ensemble = SandboxedEnsemble.start(Path(plan.deployment_code), spec, sandbox)
        except SandboxError as exc:
            template = Path(plan.deployment_code).with_name("v1.py")  # the vetted template always passed
            if Path(plan.deployment_code) == template or not template.exists():
                raise
            log.warning("deployment %s failed to start (%s); falling back to the vetted template",
                        plan.deployment_code, exc)
            plan.deployment_code = str(template)
            ensemble = SandboxedEnsemble.start(template, spec, sandbox)
        stack.callback(ensemble.close)
        served = {m.name: m for m in ensemble.models}
    return [served[spec] if spec in served else build_model(spec, plan.task, settings) for spec in plan.model_specs]


def _restore_weights(models: list[SLM], weights: dict[str, str]) -> None:
    for model in models:
        if isinstance(model, TrainableSLM) and model.name in weights:
            load_trained(model, Path(weights[model.name]))


def retry_failed(settings: Settings, run_dir: Path, *, switch_llm: bool = False,
                 on_progress: Callable[[dict], None] = lambda event: None) -> tuple[dict[str, Any], Path]:
    """Ask the run's LLM again about its ``llm_failed`` rows; rewrite the output and the report.
    Rows that get a valid label now become ``llm_verified`` (and join the hard-sample pool)."""
    plan = RunPlan.load(run_dir)
    if plan.verifier and plan.verifier.get("human") and not switch_llm:
        raise UserError(f"run {plan.run_id} was verified by a person: its llm_failed rows are the ones they skipped; "
                        "retry-failed would have an LLM label them (pass --switch-llm for that)")
    settings, note = settings_for_resume(plan, settings.model_copy(update=frozen_settings(plan.settings)),
                                         switch_llm=switch_llm)
    source = open_run_source(plan)
    paths = RunPaths(run_dir)
    with ExitStack() as stack:
        stack.enter_context(RunLock(run_dir))
        store = RunStore(paths.store)
        stack.callback(store.close)
        failed = store.results_with_source(LabelSource.LLM_FAILED.value)
        if not failed:
            raise UserError(f"run {plan.run_id} has no llm_failed rows to retry")
        check_output_writable(Path(plan.out_path))
        llm = stack.enter_context(llm_session(settings, log_dir=run_dir))
        check_reachable(llm)
        record_llm(plan, base_url=llm.base_url, model_id=llm.model_id, embedded=llm.embedded, settings=settings)
        plan.save(run_dir)
        verifier = make_verifier("llm", plan.task, run_dir, plan.run_id, settings, llm=llm)
        on_progress({"event": "note", "text": f"asking {llm.model_id} again about {len(failed)} llm_failed rows"})
        texts = source.texts_for(r["row_id"] for r in failed)
        answers = {r.row_id: r for r in verifier.verify([(r["row_id"], texts[r["row_id"]]) for r in failed])}
        fixed = []
        for rec in failed:
            got = answers.get(rec["row_id"])
            if got is not None and not got.failed and got.label is not None:
                fixed.append({**rec, "label": got.label, "label_source": LabelSource.LLM_VERIFIED.value,
                              "llm_label": got.label})
        store.put_results(fixed)
        for rec in fixed:
            store.add_to_pool([(rec["row_id"], rec["label"])], rec["batch"])
        previous = json.loads(paths.report_json.read_text(encoding="utf-8")) if paths.report_json.is_file() else {}
        llm_info = {"model_id": llm.model_id, "base_url": llm.base_url, "embedded": llm.embedded,
                    "all": plan.llm.all_labels() if plan.llm else [llm.model_id]}
        if note:
            source.warnings.append(note)
        shards = paths.labelled  # labels changed: the output is assembled again from the store
        shutil.rmtree(shards, ignore_errors=True)
        report = _finish(plan, source, store, ShardWriter(shards), verifier, settings, [], llm_info,
                         dict(previous.get("timings_s") or {}), run_dir, model_descriptions=previous.get("models"),
                         estimate=_estimate(run_dir, True, [], source, plan.task, settings, kind="llm",
                                            on_progress=on_progress))
    return report, run_dir


def _estimate(run_dir: Path, resumed: bool, models: list[SLM], source: DataSource, task: TaskSpec,
              settings: Settings, *, kind: str, on_progress: Callable[[dict], None]) -> PlanEstimate | None:
    """The cost plan made before the first batch (estimate.json), kept for the report; a resumed run reads it back.

    It is a forecast, not part of labelling: if it cannot be made the run goes on, with a warning.
    """
    path = run_dir / "estimate.json"
    if resumed:
        return PlanEstimate.model_validate_json(path.read_text(encoding="utf-8")) if path.is_file() else None
    try:
        est = estimate_for_models(models, source.sample_texts(DEFAULT_PILOT_ROWS), source.n_rows, source.n_empty,
                                  task, settings, kind=kind)
    except Exception as exc:  # noqa: BLE001 - a forecast must never stop the run it forecasts
        log.warning("no cost estimate for this run: %s: %s", type(exc).__name__, exc)
        return None
    path.write_text(est.model_dump_json(indent=2), encoding="utf-8")
    on_progress({"event": "estimate", "lines": summary_lines(est)})
    return est


def _finish(plan: RunPlan, source: DataSource, store: RunStore, writer: ShardWriter, verifier: Verifier,
            settings: Settings, models: list[SLM], llm_info: dict[str, Any], timings: dict[str, float],
            run_dir: Path, model_descriptions: list[dict] | None = None,
            estimate: PlanEstimate | None = None, decide: dict | None = None) -> dict[str, Any]:
    n = source.n_rows
    if not store.covers(n):
        raise RuntimeError(f"run store holds {store.n_results()} rows for {n} inputs")
    writer.flush()
    for lo, hi in writer.missing(n):  # stored, but killed before its shard was written: the store is the truth
        writer.append_stored(store, lo, hi)
        writer.flush()
    written = assemble(source, writer, Path(plan.out_path))
    warnings = list(source.warnings) + written + ([EMBEDDED_WARNING] if llm_info["embedded"] else [])
    if settings.engine == "ray":
        where = ("ray: the frozen SLMs ran on Ray actors built from their specs (no generated code); trainable "
                 "models on an actor each")
    elif plan.deployment_code:
        where = (f"{plan.sandbox}: the frozen SLMs ran in the generated deployment code ({plan.deployment_code}); "
                 f"trainable models in-process")
    else:
        where = "none: all SLMs ran in-process"
    described = model_descriptions if model_descriptions is not None else [m.describe() for m in models]
    report = build_report(
        run={"run_id": plan.run_id, "instruction": plan.task.instruction, "labels": plan.task.label_names,
             "data_path": plan.data_path, "out_path": plan.out_path, "run_dir": str(run_dir)},
        tally=tally_run(store, source, bool(plan.gold_column), plan.task.label_names, [m["name"] for m in described]),
        usage=verifier.ledger(), settings=settings, models=described,
        finetune_records=store.finetune_records(), timings=timings, labels=plan.task.label_names,
        llm=llm_info,
        warnings=warnings,
        sandbox=where,
        planning_usage=verifier.ledger(f"{plan.run_id}:plan"), estimate=estimate,
        decide=decide,
    )
    write_report(report, run_dir)
    return report
