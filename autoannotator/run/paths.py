"""Where everything of one run lives. Every other module asks ``RunPaths`` instead of joining names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def plan(self) -> Path:  # run.json: task, models, frozen settings (what a resume needs)
        return self.root / "run.json"

    @property
    def store(self) -> Path:  # per-row results, hard-sample pool, fine-tuning rounds
        return self.root / "run.sqlite"

    @property
    def answers(self) -> Path:  # every verifier answer paid for, and the request log
        return self.root / "llm_cache.sqlite"

    @property
    def embeddings(self) -> Path:  # sentence embeddings of rows, for choosing the verifier's few-shot examples
        return self.root / "embeddings.sqlite"

    @property
    def checkpoints(self) -> Path:  # LangGraph's SQLite checkpointer
        return self.root / "checkpoints.sqlite"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def labelled(self) -> Path:  # the labelled columns as Parquet shards, written as the run goes
        return self.root / "labelled"

    @property
    def models(self) -> Path:  # fine-tuned weights, one folder per round and model
        return self.root / "models"

    @property
    def deploy(self) -> Path:  # generated deployment code, every version with its smoke test
        return self.root / "deploy"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    def is_run(self) -> bool:
        return self.plan.is_file()
