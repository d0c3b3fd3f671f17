"""What re-voting a finished run's settled rows with its last kept student would change (the measurement that
led to the final re-vote, docs/benchmarks.md): the settled rows' accuracy as labelled, as the last student votes
on them, and the run's accuracy with the settled labels replaced by that vote. Needs a run whose output has the
gold column (``input_label``) and a student round saved under ``models/``.

Usage: PYTHONPATH=. .venv/bin/python benchmarks/revote_offline.py RUN_DIR [--labels negative,positive]
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from autoannotator.slm.student import MiniLMStudent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--labels", default=None, help="the task's labels in order (default: from run.json)")
    args = ap.parse_args()
    plan = json.loads((args.run_dir / "run.json").read_text())
    labels = args.labels.split(",") if args.labels else [lab["name"] for lab in plan["task"]["labels"]]
    rows = list(csv.DictReader(open(plan["out_path"], newline="", encoding="utf-8")))
    rounds = sorted(args.run_dir.glob("models/round-*/student"), key=lambda p: int(p.parent.name.split("-")[1]))
    student = MiniLMStudent(labels)
    student.load(rounds[-1])
    votes = student.predict([r["text"] for r in rows]).votes
    final = np.array([labels[v] if v >= 0 else "" for v in votes])
    gold = np.array([r["input_label"] for r in rows])
    label = np.array([r["label"] for r in rows])
    settled = np.array([r["label_source"] == "slm_consensus" for r in rows])
    print(f"{rounds[-1]}: {settled.sum()} settled rows")
    print(f"settled as labelled {np.mean(label[settled] == gold[settled]):.4f}, "
          f"as the last student votes {np.mean(final[settled] == gold[settled]):.4f}")
    print(f"run as labelled {np.mean(label == gold):.4f}, "
          f"settled rows by the last student {np.mean(np.where(settled, final, label) == gold):.4f}")


if __name__ == "__main__":
    main()
