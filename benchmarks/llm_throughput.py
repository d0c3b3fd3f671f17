"""LLM verification throughput against concurrency, on the embedded server (or any configured endpoint).

Each concurrency level verifies the same N review sentences with a fresh cache, so every call is paid.
Prints samples/s per level and the ratio to concurrency 1, measured in one run.
Usage: python benchmarks/llm_throughput.py [--n 24] [--levels 1,2,4,8]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from autoannotator.llm.factory import llm_session
from autoannotator.verify.llm import LLMVerifier as Verifier
from autoannotator.config import load_settings
from autoannotator.task import LabelDef, TaskSpec

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--levels", default="1,2,4,8")
    args = parser.parse_args()
    with open(REPO / "examples" / "reviews.csv", newline="", encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)][: args.n]
    task = TaskSpec(instruction="label these reviews for sentiment",
                    labels=[LabelDef(name="positive"), LabelDef(name="negative")])
    settings = load_settings()
    with llm_session(settings) as llm, tempfile.TemporaryDirectory() as tmp:
        Verifier(llm.chooser(task.label_names, 1), llm.model_id, task, Path(tmp) / "warm.sqlite", "warm").verify([(0, "warm up")])
        base = None
        print(f"LLM {llm.model_id}, {len(texts)} samples per level")
        for level in [int(x) for x in args.levels.split(",")]:
            verifier = Verifier(llm.chooser(task.label_names, level), llm.model_id, task, Path(tmp) / f"c{level}.sqlite", f"c{level}",
                                max_concurrency=level)
            start = time.perf_counter()
            verifier.verify(list(enumerate(texts)))
            rate = len(texts) / (time.perf_counter() - start)
            base = base or rate
            usage = verifier.ledger()
            print(f"concurrency {level:2d}: {rate:6.2f} samples/s  (x{rate / base:.2f} vs 1)  "
                  f"tokens in/out per call {usage.tokens_in / usage.calls:.0f}/{usage.tokens_out / usage.calls:.0f}")


if __name__ == "__main__":
    main()
