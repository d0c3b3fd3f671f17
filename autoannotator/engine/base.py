"""The engine interface and the in-process engine (today's ensemble call)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from autoannotator.config import FinetuneSettings
from autoannotator.ensemble import EnsembleOutput, run_ensemble
from autoannotator.finetune import RoundData, train_round
from autoannotator.slm.base import SLM, TrainableSLM


@runtime_checkable
class Engine(Protocol):
    """Runs the ensemble over one chunk of rows; ``row_ids`` let an engine prefetch and cache ahead."""

    name: str

    def ensemble(self, row_ids: Sequence[int], texts: Sequence[str]) -> EnsembleOutput: ...

    def models_changed(self) -> None:
        """A trainable model's weights changed (a fine-tuning round was accepted): drop cached votes."""

    def train_round(self, model: TrainableSLM, data: RoundData, cfg: FinetuneSettings, round_: int,
                    save_dir: Path) -> tuple[TrainableSLM, dict]:
        """One fine-tuning round (``finetune.train_round``) where the engine trains: (model kept, record)."""

    def close(self) -> None: ...


class LocalEngine:
    """Every model in this process, one call per chunk: what the loop has always done.

    ``models`` is the loop's own list, so a fine-tuned model that replaces its predecessor in that list is
    the one used for the next chunk.
    """

    name = "local"

    def __init__(self, models: list[SLM], n_labels: int, min_votes: int = 1):
        self.models = models
        self.n_labels = n_labels
        self.min_votes = min_votes

    def ensemble(self, row_ids: Sequence[int], texts: Sequence[str]) -> EnsembleOutput:
        return run_ensemble(self.models, texts, self.n_labels, self.min_votes)

    def models_changed(self) -> None:
        return None

    def train_round(self, model: TrainableSLM, data: RoundData, cfg: FinetuneSettings, round_: int,
                    save_dir: Path) -> tuple[TrainableSLM, dict]:
        return train_round(model, data, cfg, round_, save_dir)

    def close(self) -> None:
        return None
