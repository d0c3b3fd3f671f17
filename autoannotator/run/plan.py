"""``run.json``: what a run is (task, data, models, the settings that shape its labels), so a resumed
run labels the rest the same way."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from autoannotator.config import FinetuneSettings
from autoannotator.data import DataSource, open_source
from autoannotator.errors import UserError
from autoannotator.llm.identity import LLMIdentity, LLMRecord, answer_settings, identity_of, resume_llm
from autoannotator.run.paths import RunPaths
from autoannotator.run.store import RunStore
from autoannotator.task import TaskSpec

# Settings that shape the labels: frozen in run.json so a resumed run labels the rest the same way.
FROZEN_SETTINGS = ("k", "epsilon", "min_votes", "beta", "batch_size", "max_text_chars", "seed", "finetune",
                   "routing", "calibrated_margin", "confidence_bins", "posterior_model", "llm_accuracy", "llm_budget", "max_llm_cost",
                   "cap_at_paper_share", "final_revote", "final_reserve", "target_accuracy",
                   "audit", "few_shot", "few_shot_min_confidence")
# What a run planned before a setting existed ran with: a resumed run goes on labelling the same way.
OLD_RUN_DEFAULTS = {"routing": "paper", "few_shot": 0, "posterior_model": "patterns", "cap_at_paper_share": False,
                    "final_revote": False, "final_reserve": 0.0}


def frozen_settings(planned: dict) -> dict:
    """The label-shaping settings recorded in run.json, as updates for Settings (older runs: OLD_RUN_DEFAULTS)."""
    frozen = {**OLD_RUN_DEFAULTS, **{k: v for k, v in planned.items() if k in FROZEN_SETTINGS}}
    frozen["finetune"] = FinetuneSettings.model_validate(frozen.get("finetune", {}))
    return frozen


class RunPlan(BaseModel):
    run_id: str
    created_at: str
    data_path: str
    data_fingerprint: str
    gold_column: str | None
    out_path: str
    task: TaskSpec
    model_specs: list[str]
    settings: dict[str, Any]
    # The frozen models' deployment: the generated program and what it serves (None: in-process).
    deployment_code: str | None = None
    deployment: dict[str, Any] | None = None
    sandbox: str = "none"
    # The LLM the run is labelled by, for life (llm/identity.py): a resume keeps it unless --switch-llm.
    llm: LLMRecord | None = None
    # A verifier other than the run's LLM (the benchmark's simulated one, a person): its description.
    verifier: dict[str, Any] | None = None

    @classmethod
    def load(cls, run_dir: Path) -> "RunPlan":
        path = RunPaths(run_dir).plan
        if not path.is_file():
            raise UserError(f"{run_dir} is not a run directory (no run.json); start a new run without --resume")
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError as exc:  # pydantic: a run.json from another version or hand-edited
            raise UserError(f"{path} is unreadable: {str(exc).splitlines()[0]}") from None

    def save(self, run_dir: Path) -> None:
        RunPaths(run_dir).plan.write_text(self.model_dump_json(indent=2), encoding="utf-8")


def new_run_id(instruction: str) -> str:
    slug = "-".join("".join(c if c.isalnum() else " " for c in instruction.lower()).split()[:4]) or "run"
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{slug}-{secrets.token_hex(2)}"


def open_run_source(plan: RunPlan) -> DataSource:
    """The run's input (a file, a directory or a glob), read in chunks as the run read it; refuses data that
    changed since (row ids would not match)."""
    max_chars = int(plan.settings.get("max_text_chars", 20_000))
    source = open_source(plan.data_path, plan.task.text_column, plan.gold_column, max_chars)
    if source.fingerprint != plan.data_fingerprint:
        raise UserError(f"{plan.data_path} has changed since run {plan.run_id} labelled it")
    return source


def requested_llm(settings: Any) -> LLMIdentity | None:
    """The LLM the settings name explicitly; None when they name none (the embedded default)."""
    if settings.llm_base_url:
        return identity_of(settings.llm_base_url, settings.llm_model)
    if settings.llm_model and (settings.llm_api_key or getattr(settings, "openai_api_key", None)):
        from autoannotator.llm.factory import OPENAI_BASE_URL

        return identity_of(OPENAI_BASE_URL, settings.llm_model)
    return None


def settings_for_resume(plan: RunPlan, settings: Any, *, switch_llm: bool) -> tuple[Any, str | None]:
    """The settings a resumed run talks to its LLM with: the run's own LLM (and its answer settings)
    unless the user names another and says ``--switch-llm``; refused in one line otherwise. A run whose
    answers came from the benchmark's simulated verifier is refused too: an LLM would finish it with another
    source's answers, and the benchmark's figures would no longer say what they measured."""
    if plan.verifier and plan.verifier.get("simulated"):
        who = plan.verifier.get("description") or "simulated verifier"
        raise UserError(f"run {plan.run_id} was labelled by the benchmark's {who}, not an LLM: resuming it with "
                        "one would mix their answers; run `autoannotator bench` again")
    record, note = resume_llm(plan.llm, requested_llm(settings), switch=switch_llm, run_id=plan.run_id)
    if record is None:
        return settings, None
    update: dict[str, Any] = dict(record.settings)
    ident = record.identity
    if ident.embedded:
        update.update(llm_base_url=None, llm_model=None)
    else:
        update.update(llm_base_url=ident.base_url, llm_model=ident.model)
    plan.llm = record
    return settings.model_copy(update=update), note


def record_llm(plan: RunPlan, *, base_url: str, model_id: str, embedded: bool, settings: Any) -> None:
    """Write the identity of the LLM actually started into the plan (a new run, or an old run's first resume)."""
    if embedded:
        ident = identity_of(None, None, embedded_model=model_id.removeprefix("embedded:"))
    else:
        ident = identity_of(base_url, model_id.rsplit("@", 1)[0])
    if plan.llm is None:
        plan.llm = LLMRecord(identity=ident, settings=answer_settings(settings))
    elif plan.llm.identity.embedded and ident.embedded:
        plan.llm.identity = ident  # the GGUF name is known only once the server ran


def resume_inputs(values: dict[str, Any], store: RunStore, n_rows: int,
                  order: Sequence[int] | None = None) -> dict[str, Any]:
    """The graph's input for a resumed run, from the store, not from where the checkpoint stopped.

    A kill between a step's writes and its checkpoint leaves the checkpoint one step behind the store
    (seen: rows stored, checkpoint "finished", every later resume failing). So the store decides where
    to go on: the first row without a result, its batch index and the pool; the checkpoint only
    supplies what the store does not hold (fine-tuning counters, accepted weights). The batch in
    progress is redone from its start: its LLM answers come from the answer cache, not paid again.
    """
    cursor, batch_index = store.resume_point(order)
    # Everything but the batch in progress (which is redone): counters, weights, the decision layer's state.
    redo = ("cursor", "batch_index", "batch_ids", "batch", "verified", "pool_size", "finished", "timings",
            "routed", "audit_answers")
    inputs = {k: v for k, v in values.items() if k not in redo}
    inputs.update(n_rows=n_rows, cursor=min(cursor, n_rows), batch_index=batch_index, pool_size=store.pool_size(),
                  batch_ids=[], batch=None, verified={}, finished=False)
    return inputs
