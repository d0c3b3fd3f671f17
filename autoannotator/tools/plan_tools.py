"""The meta-controller's tools: thin LLM-facing wrappers over discovery/ and deploy/.

search_models -> read_model_card -> define_task -> probe_models -> select_models -> write_deployment_code.
define_task and select_models write into ``context.plan`` (a ``controller.PlanDraft``) so the
controller graph, its deterministic fallbacks and ``plan.json`` all read one record of what was
decided and why. Every tool is listed in ``tools/registry.py``.
"""

from __future__ import annotations

from typing import Any

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field, ValidationError

from autoannotator.deploy.codegen import DeploymentResult, write_deployment_code
from autoannotator.deploy.probe import MAX_SAMPLES, ProbeReport, probe_models
from autoannotator.deploy.proxy import (FROZEN_BUILTINS, TRAINABLE_BUILTINS, DeploymentSpec, ModelDeployment,
                                        Preprocess)
from autoannotator.discovery.cards import ModelCardResult, ReadModelCardArgs, read_model_card
from autoannotator.discovery.hub import SearchModelsArgs, SearchModelsResult, search_models
from autoannotator.sandbox import Sandbox, SandboxError
from autoannotator.task import LabelDef, build_task
from autoannotator.tools.base import ToolException, make_tool


class DefineTaskArgs(BaseModel):
    labels: list[LabelDef] = Field(min_length=2, max_length=20,
                                   description="the label set: short names, one sentence of description each")
    text_column: str | None = Field(None, description="column holding the text (default: as detected)")


class DefineTaskResult(BaseModel):
    labels: list[str]
    text_column: str
    note: str = ""


class ModelChoice(BaseModel):
    spec: str = Field(description="a candidate id from search_models, e.g. 'vader' or 'hf:org/name'")
    mapping: dict[str, str | None] | None = Field(
        None, description="the model's own label -> task label (null: no opinion); omit to map by name")
    reason: str = Field("", description="why this model")


class SelectModelsArgs(BaseModel):
    models: list[ModelChoice] = Field(min_length=1, max_length=16, description="the k models to deploy")


class SelectModelsResult(BaseModel):
    selected: list[str]
    note: str = ""


def make_define_task_tool(settings: Any = None, context: Any = None):
    def define_task(args: DefineTaskArgs) -> DefineTaskResult:
        plan = context.plan
        if plan.labels_given:
            return DefineTaskResult(labels=plan.task.label_names, text_column=plan.task.text_column,
                                    note="the user fixed the labels; kept as given")
        try:
            plan.task = build_task(plan.instruction, args.labels, plan.task.text_column)
        except Exception as exc:  # a UserError's one line is exactly what the LLM needs to hear
            raise ToolException(str(exc)) from None
        plan.decided_by["task"] = "llm"
        return DefineTaskResult(labels=plan.task.label_names, text_column=plan.task.text_column)

    return make_tool(define_task, name="define_task", args_schema=DefineTaskArgs, result_model=DefineTaskResult,
                     description="Fix the task's label set (names and one-line descriptions) from the user's request.")


def _spec_with_mapping(choice: ModelChoice) -> str:
    """catalog.py reads an explicit mapping from the spec itself: ``hf:id#NATIVE=task,OTHER=``."""
    if not choice.mapping or not choice.spec.startswith("hf:") or "#" in choice.spec:
        return choice.spec
    return choice.spec + "#" + ",".join(f"{k}={v or ''}" for k, v in choice.mapping.items())


def make_select_models_tool(settings: Any = None, context: Any = None):
    def select_models(args: SelectModelsArgs) -> SelectModelsResult:
        plan = context.plan
        known = {c["spec"] for c in plan.candidates} | {c["id"] for c in plan.candidates}
        unknown = [c.spec for c in args.models if c.spec.split("#")[0] not in known]
        if unknown:
            raise ToolException(f"not among the searched candidates: {unknown}; choose from {sorted(known)[:12]}")
        specs = list(dict.fromkeys(_spec_with_mapping(c) for c in args.models))
        k = context.settings.k
        if len(specs) != k:
            raise ToolException(f"choose exactly k = {k} distinct models, got {len(specs)}")
        try:
            built = [context.build_model(spec) for spec in specs]
        except Exception as exc:
            raise ToolException(f"cannot use that choice: {exc}") from None
        mute = [m.name for m in built if not m.mapping.covered_task_labels]
        if mute:
            raise ToolException(f"{mute} can vote for none of the task's labels; fix the mapping or pick others")
        plan.selection = [{"spec": s, "reason": c.reason, "mapping": m.mapping.mapping, "trainable": m.trainable}
                          for s, c, m in zip(specs, args.models, built)]
        plan.decided_by["selection"] = "llm"
        return SelectModelsResult(selected=specs)

    return make_tool(select_models, name="select_models", args_schema=SelectModelsArgs,
                     result_model=SelectModelsResult,
                     description="Choose the k models that will label the data, with a label mapping for each.")


def make_search_models_tool(settings: Any = None, context: Any = None) -> StructuredTool:
    return make_tool(
        lambda args: search_models(args, settings, context), name="search_models",
        description=("Find small text classifiers (SLMs) for a labelling task: on the Hugging Face Hub when "
                     "it is reachable, else among the models this machine can run. Give the task in words and "
                     "its labels. Returns candidates ranked by relevance, each with its own labels, the task "
                     "labels they cover, downloads, size, licence and languages; put a candidate's `spec` in "
                     "the ensemble to use it. Read a candidate's card with read_model_card before choosing."),
        args_schema=SearchModelsArgs, result_model=SearchModelsResult)


def make_read_model_card_tool(settings: Any = None, context: Any = None) -> StructuredTool:
    return make_tool(
        read_model_card, name="read_model_card",
        description=("Read a model's card before choosing it: pipeline tag, its own labels, training datasets, "
                     "languages, licence, the metrics its authors report, and the start of the card's text. "
                     "Takes a hub id, an hf:<id> spec, a local folder, or a packaged scorer name."),
        args_schema=ReadModelCardArgs, result_model=ModelCardResult)


class ProbeModelsArgs(BaseModel):
    candidates: list[str] = Field(min_length=1, max_length=12,
                                  description="specs from search_models, e.g. ['vader', 'hf:org/name']")
    n_samples: int = Field(30, ge=5, le=MAX_SAMPLES, description="how many of the user's texts to try them on")


def _as_spec(candidate: str) -> str:
    c = candidate.strip()
    return c if c in FROZEN_BUILTINS or c in TRAINABLE_BUILTINS or c.startswith("hf:") else f"hf:{c}"


def make_probe_models_tool(settings: Any = None, context: Any = None):
    """Context: run_dir, samples, sandbox, plan.task; ``llm_labels`` (the LLM's labels of samples) if known."""

    def run(args: ProbeModelsArgs) -> ProbeReport:
        samples = list(getattr(context, "samples", []) or [])[:args.n_samples]
        if not samples:
            raise ToolException("no sample texts to probe on")
        llm = getattr(context, "llm_labels", None)
        if llm:  # the LLM labelled the first len(llm) samples: compare on exactly those
            samples = samples[:len(llm)]
        try:
            return probe_models([_as_spec(c) for c in args.candidates], samples, context_labels(context),
                                context_sandbox(context, settings), context.run_dir,
                                llm_labels=list(llm)[:len(samples)] if llm else None)
        except (SandboxError, ValueError) as exc:
            raise ToolException(' '.join(str(exc).split())) from None

    return make_tool(run, name="probe_models", args_schema=ProbeModelsArgs, result_model=ProbeReport,
                     description="Run candidate models on a sample of the user's texts (in the sandbox): "
                                 "load errors, label coverage, vote spread, abstain rate, agreement with the LLM.")


make_probe_models_tool.RESULT_MODEL = ProbeReport  # type: ignore[attr-defined]


class DeployModelArgs(BaseModel):
    spec: str = Field(description="a chosen model, e.g. 'vader' or 'hf:org/name'")
    mapping: dict[str, str | None] | None = Field(None, description="its label -> task label (null: no opinion)")
    batch_size: int = Field(64, ge=1, le=4096)
    max_length: int = Field(256, ge=8, le=8192, description="tokens per text")
    preprocess: Preprocess = Preprocess()


class WriteDeploymentCodeArgs(BaseModel):
    models: list[DeployModelArgs] = Field(min_length=1, max_length=16, description="the frozen models to deploy")
    customise: bool = Field(True, description="let the LLM adapt the vetted template (false: use it as is)")


def context_sandbox(context: Any, settings: Any = None) -> Sandbox:
    """The context's sandbox, else one made once from ``settings.sandbox`` ('auto' by default)."""
    sandbox = getattr(context, "sandbox", None)
    if sandbox is None:
        from autoannotator.sandbox import get_sandbox

        sandbox = get_sandbox(getattr(settings, "sandbox", None) or "auto",
                              gpu=getattr(settings, "device", "cpu") == "cuda")
        try:
            context.sandbox = sandbox
        except AttributeError:
            pass
    return sandbox


def context_labels(context: Any) -> list[str]:
    task = getattr(getattr(context, "plan", None), "task", None) or getattr(context, "task", None)
    if task is None:
        raise ToolException("no task defined yet: call define_task first")
    return list(task.label_names)


def make_write_deployment_code_tool(settings: Any = None, context: Any = None):
    """Context: run_dir, samples, chat, weak_llm (a weak LLM does not customise), sandbox, plan.task."""
    device = getattr(settings, "device", "auto")
    max_text_chars = getattr(settings, "max_text_chars", 20_000)

    def run(args: WriteDeploymentCodeArgs) -> DeploymentResult:
        try:
            spec = DeploymentSpec(task_labels=context_labels(context), models=[
                ModelDeployment(device=device, max_text_chars=max_text_chars, **m.model_dump()) for m in args.models])
        except ValidationError as exc:
            raise ToolException("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]))
        chat = getattr(context, "chat", None) if args.customise and not getattr(context, "weak_llm", False) else None
        try:
            return write_deployment_code(spec, context.run_dir, context_sandbox(context, settings),
                                         list(getattr(context, "samples", []) or []), chat=chat)
        except SandboxError as exc:
            raise ToolException(str(exc)) from None

    return make_tool(run, name="write_deployment_code", args_schema=WriteDeploymentCodeArgs,
                     result_model=DeploymentResult,
                     description="Write and smoke-test (in the sandbox) the program that deploys the chosen "
                                 "frozen models; falls back to a vetted template if the code fails.")


make_write_deployment_code_tool.RESULT_MODEL = DeploymentResult  # type: ignore[attr-defined]
