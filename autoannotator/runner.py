"""One labelling run, start to finish (or resumed): plan, load models, run the annotation graph, report.

The run directory holds everything a resumed run needs: ``run.json`` (the plan: task, models,
settings), ``checkpoints.sqlite`` (LangGraph's SQLite checkpointer), ``run.sqlite`` (per-row
results, hard-sample pool, fine-tuning rounds), ``llm_cache.sqlite`` (every LLM answer paid for)
and ``models/`` (fine-tuned weights).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

from autoannotator.agent.labels import choose_labels
from autoannotator.agent.planning import deployment_spec_for, plan_run, probe_samples
from autoannotator.config import FinetuneSettings, Settings
from autoannotator.data import Dataset, default_output_path, load_dataset
from autoannotator.deploy.codegen import write_deployment_code
from autoannotator.deploy.proxy import DeploymentSpec, SandboxedEnsemble
from autoannotator.errors import UserError
from autoannotator.finetune import load_trained
from autoannotator.graphs.annotate import AnnotateContext, build_annotate_graph
from autoannotator.llm.factory import LLMHandle, check_reachable, llm_session
from autoannotator.run.output import write_run_output
from autoannotator.run.paths import RunPaths
from autoannotator.run.plan import FROZEN_SETTINGS, RunPlan, new_run_id
from autoannotator.run.report import EMBEDDED_WARNING, build_report, write_report
from autoannotator.run.store import RunStore
from autoannotator.sandbox import get_sandbox
from autoannotator.sandbox.base import SandboxError
from autoannotator.slm.base import SLM, TrainableSLM
from autoannotator.slm.catalog import build_model, default_selection
from autoannotator.task import LabelDef, TaskSpec, build_task
from autoannotator.verify.base import Verifier
from autoannotator.verify.factory import make_verifier

log = logging.getLogger(__name__)

VerifierFactory = Callable[[TaskSpec, Path, str], Verifier]
__all__ = ["RunPlan", "label", "write_run_output"]


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
    resume: bool = False,
    on_progress: Callable[[dict], None] = lambda event: None,
    verifier_factory: VerifierFactory | None = None,
    verifier_info: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Label ``data_path``; returns (report, run_dir). Resuming needs only ``run_dir``.

    ``verifier_factory(task, run_dir, run_id)`` replaces the LLM verifier (the benchmark's, which
    holds its own LLM session or simulates one; ``verifier_info`` describes it for the report); no
    LLM is started here then, so the label set must be given.
    """
    timings: dict[str, float] = {}
    if resume:
        if run_dir is None:
            raise UserError("--resume needs the run directory: --resume RUN_DIR")
        plan = RunPlan.load(run_dir)
        frozen = {k: v for k, v in plan.settings.items() if k in FROZEN_SETTINGS}
        frozen.setdefault("routing", "paper")  # a run planned before the decision layer keeps the paper's rule
        frozen["finetune"] = FinetuneSettings.model_validate(frozen.get("finetune", {}))
        settings = settings.model_copy(update=frozen)
        data_path = Path(plan.data_path) if data_path is None else data_path
    elif not instruction:
        raise UserError("say what to label: --task \"label these reviews for sentiment\"")

    start = time.perf_counter()
    dataset = load_dataset(data_path, plan.task.text_column if resume else text_column,
                           plan.gold_column if resume else gold_column, settings.max_text_chars)
    timings["load_data"] = time.perf_counter() - start
    if resume and dataset.fingerprint != plan.data_fingerprint:
        raise UserError(f"{data_path} has changed since run {plan.run_id} started; resume with the same file")

    if not resume:
        if labels:  # fail on a bad label set before paying for an LLM start
            build_task(instruction, labels, dataset.text_column)
        run_id = new_run_id(instruction)
        run_dir = run_dir or settings.runs_dir / run_id
        if RunPaths(run_dir).is_run():
            raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)

    with ExitStack() as stack:
        llm = None
        if verifier_factory is None:
            start = time.perf_counter()
            llm = stack.enter_context(llm_session(settings, log_dir=run_dir))
            check_reachable(llm)
            timings["llm_start"] = time.perf_counter() - start
        if not resume:
            labels_given = bool(labels)
            task_source = "user (--labels)"
            if not labels:
                if llm is None:
                    raise UserError("a label set is needed when no LLM is started: pass --labels")
                labels, note = choose_labels(llm.chat, instruction, probe_samples(dataset.texts, 10),
                                             weak_llm=llm.embedded)
                task_source = note
                on_progress({"event": "note", "text": note})
                dataset.warnings.append(note)
            task = build_task(instruction, labels, dataset.text_column)
            plan = RunPlan(
                run_id=run_id, created_at=datetime.now(timezone.utc).isoformat(), data_path=str(data_path.resolve()),
                data_fingerprint=dataset.fingerprint, gold_column=gold_column,
                out_path=str(out_path or default_output_path(data_path, run_dir)), task=task,
                model_specs=list(settings.models),
                settings={k: v for k, v in settings.model_dump(mode="json").items() if k in FROZEN_SETTINGS},
            )
            start = time.perf_counter()
            _plan_models(plan, settings, dataset, llm, labels_given=labels_given, task_source=task_source,
                         run_dir=run_dir, on_progress=on_progress)
            timings["plan"] = time.perf_counter() - start
            plan.save(run_dir)
        elif out_path is not None:
            plan.out_path = str(out_path)

        start = time.perf_counter()
        models = _load_models(plan, settings, stack)
        timings["load_models"] = time.perf_counter() - start
        paths = RunPaths(run_dir)
        store = RunStore(paths.store)
        stack.callback(store.close)
        verifier = verifier_factory(plan.task, run_dir, plan.run_id) if verifier_factory else \
            make_verifier("llm", plan.task, run_dir, plan.run_id, settings, llm=llm)
        saver = stack.enter_context(SqliteSaver.from_conn_string(str(paths.checkpoints)))

        llm_info = ({"model_id": llm.model_id, "base_url": llm.base_url, "embedded": llm.embedded} if llm else
                    {"model_id": verifier.model_id, "base_url": None, "embedded": False, **(verifier_info or {})})
        ctx = AnnotateContext(dataset=dataset, task=plan.task, models=models, verifier=verifier, store=store,
                              settings=settings, run_dir=run_dir, on_progress=on_progress,
                              empty_rows=set(dataset.empty_rows))
        graph = build_annotate_graph(ctx, checkpointer=saver)
        n_batches = -(-len(dataset.texts) // settings.batch_size)
        config = {"configurable": {"thread_id": plan.run_id}, "recursion_limit": 10 * n_batches + 50}
        snapshot = graph.get_state(config)
        resumed = bool(snapshot.values)
        if resumed:
            _restore_weights(models, snapshot.values.get("weights") or {})
            on_progress({"event": "resumed", "rows_done": store.n_results(), "n_rows": len(dataset.texts)})
        on_progress({"event": "start", "n_rows": len(dataset.texts), "rows_done": store.n_results(),
                     "models": [m.name for m in models], "llm": llm_info["model_id"], "run_dir": str(run_dir)})
        graph_start = time.perf_counter()
        if not resumed:
            graph.invoke({"n_rows": len(dataset.texts), "epsilon": settings.epsilon, "beta": settings.beta,
                          "has_trainable": any(isinstance(m, TrainableSLM) for m in models), "cursor": 0,
                          "batch_index": 0, "pool_size": 0, "pool_at_last_finetune": 0, "finetune_round": 0,
                          "weights": {}, "timings": {}}, config, durability="sync")
        elif snapshot.next:  # stopped part-way: go on from the last checkpoint
            graph.invoke(None, config, durability="sync")
        final = graph.get_state(config).values
        node_s = final.get("timings", {})
        if not resumed:
            # The share of the loop spent outside the models, the LLM and training: LangGraph's
            # checkpointing, the run store, routing. Only meaningful for a run made in one go.
            wall = time.perf_counter() - graph_start
            work = sum(node_s.get(k, 0.0) for k in ("ensemble", "verify", "finetune"))
            timings["graph_wall"] = wall
            timings["orchestration_overhead_share"] = max(0.0, 1 - work / wall) if wall else 0.0
        report = _finish(plan, dataset, store, verifier, settings, models, llm_info, {**timings, **node_s}, run_dir,
                         decide=final.get("decide_summary"))
    return report, run_dir


def _plan_models(plan: RunPlan, settings: Settings, dataset: Dataset, llm: LLMHandle | None, *, labels_given: bool, task_source: str,
                 run_dir: Path, on_progress: Callable[[dict], None]) -> None:
    """Fill the plan's models and deployment: the user's --models, else the meta-controller's choice."""
    sandbox = None if settings.sandbox == "none" else get_sandbox(settings.sandbox, gpu=settings.device == "cuda")
    plan.sandbox = sandbox.name if sandbox else "none"
    if not plan.model_specs and llm is not None:
        def label_samples(task: TaskSpec, texts: list[str]) -> list[str]:
            # Its own cache namespace: planning calls are counted apart from the annotation's, whose
            # llm_calls then equal its LLM-verified rows exactly.
            probe = make_verifier("llm", task, run_dir, f"{plan.run_id}:plan", settings, llm=llm,
                                  model_id=f"{llm.model_id} (probe)")
            return [r.label for r in probe.verify(list(enumerate(texts)))]

        on_progress({"event": "note", "text": "the meta-controller is choosing and deploying the models"})
        # A weak LLM's label proposals are junk, so the label set chosen for it already stands.
        drafted = plan_run(settings, instruction=plan.task.instruction, task=plan.task,
                           labels_given=labels_given or llm.embedded, task_source=task_source,
                           texts=dataset.texts, run_dir=run_dir, chat=llm.chat, weak_llm=llm.embedded,
                           sandbox=sandbox or get_sandbox("auto"), label_samples=label_samples,
                           on_event=on_progress)
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
            result = write_deployment_code(spec, run_dir, sandbox, probe_samples(dataset.texts))
            if result.final_code is None:
                raise UserError(f"the deployment code failed its smoke test in the {sandbox.name} sandbox: "
                                f"{result.error}")
            plan.deployment_code, plan.deployment = result.final_code, spec.model_dump(mode="json")


def _load_models(plan: RunPlan, settings: Settings, stack: ExitStack) -> list[SLM]:
    """Frozen models from the sandboxed worker (one process, loaded once), trainable ones in-process."""
    served: dict[str, SLM] = {}
    if plan.deployment_code:
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


def _finish(plan: RunPlan, dataset: Dataset, store: RunStore, verifier: Verifier, settings: Settings,
            models: list[SLM], llm_info: dict[str, Any], timings: dict[str, float], run_dir: Path,
            decide: dict | None = None) -> dict[str, Any]:
    results = store.results()
    if [r["row_id"] for r in results] != list(range(len(dataset.texts))):
        raise RuntimeError(f"run store holds {len(results)} rows for {len(dataset.texts)} inputs")
    written = write_run_output(plan, dataset, results)
    warnings = list(dataset.warnings) + written + ([EMBEDDED_WARNING] if llm_info["embedded"] else [])
    report = build_report(
        run={"run_id": plan.run_id, "instruction": plan.task.instruction, "labels": plan.task.label_names,
             "data_path": plan.data_path, "out_path": plan.out_path, "run_dir": str(run_dir)},
        results=results, usage=verifier.ledger(), settings=settings, models=[m.describe() for m in models],
        finetune_records=store.finetune_records(), timings=timings,
        gold=dataset.gold if plan.gold_column else None, labels=plan.task.label_names,
        llm=llm_info,
        warnings=warnings,
        sandbox=(f"{plan.sandbox}: the frozen SLMs ran in the generated deployment code ({plan.deployment_code}); "
                 f"trainable models in-process" if plan.deployment_code else "none: all SLMs ran in-process"),
        planning_usage=verifier.ledger(f"{plan.run_id}:plan"),
        decide=decide,
    )
    write_report(report, run_dir)
    return report
