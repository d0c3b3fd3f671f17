"""``run.json``: what a run is (task, data, models, the settings that shape its labels), so a resumed
run labels the rest the same way."""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from autoannotator.data import Dataset, load_dataset
from autoannotator.errors import UserError
from autoannotator.run.paths import RunPaths
from autoannotator.task import TaskSpec

# Settings that shape the labels: frozen in run.json so a resumed run labels the rest the same way.
FROZEN_SETTINGS = ("k", "epsilon", "min_votes", "beta", "batch_size", "max_text_chars", "seed", "finetune",
                   "routing", "calibrated_margin", "llm_accuracy", "llm_budget", "max_llm_cost", "audit")


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


def load_run_dataset(plan: RunPlan) -> Dataset:
    """The run's input file as the run read it; refuses a file that changed since (row ids would not match)."""
    max_chars = int(plan.settings.get("max_text_chars", 20_000))
    if not Path(plan.data_path).is_file():
        raise UserError(f"the data file of run {plan.run_id} is gone: {plan.data_path}")
    dataset = load_dataset(plan.data_path, plan.task.text_column, plan.gold_column, max_chars)
    if dataset.fingerprint != plan.data_fingerprint:
        raise UserError(f"{plan.data_path} has changed since run {plan.run_id} labelled it")
    return dataset
