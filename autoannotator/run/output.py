"""The labelled output file: every input row, in order, once, with the run's columns added."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoannotator.data import Dataset, write_labelled
from autoannotator.run.plan import RunPlan

OUTPUT_COLUMNS = ("label", "label_source", "confidence", "uncertainty", "votes")


def write_run_output(plan: RunPlan, dataset: Dataset, results: list[dict[str, Any]]) -> list[str]:
    """The labelled output file from the store's rows; returns the writer's warnings."""
    return write_labelled(dataset, {
        "label": [r["label"] if r["label"] is not None else "" for r in results],
        "label_source": [str(r["label_source"]) for r in results],
        # P(label right) under the decision layer's posterior; empty for rows stored before it existed
        "confidence": [round(r["confidence"], 4) if r.get("confidence") is not None else None for r in results],
        "uncertainty": [r["uncertainty"] for r in results],
        "votes": [json.dumps(r["votes"], ensure_ascii=False) for r in results],
    }, Path(plan.out_path))
