"""The meta-controller's own decisions as tools: the task spec and the choice of k models.

Both write into ``context.plan`` (a ``controller.PlanDraft``) so the controller graph, its
deterministic fallbacks and ``plan.json`` all read one record of what was decided and why.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

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
