"""Where a finished run's LLM calls went: rows grouped by how the small models voted.

Each model's mark per row: ``+`` voted with the row's plurality label, ``-`` against it, ``~``
split evenly with another, ``.`` abstained (or did not vote yet). For each pattern: rows, how many went to the LLM, and the
accuracy against gold of the final label and of each model's vote there. It shows which
disagreements the LLM resolves and what accepting them instead (a larger epsilon) would cost.

Run:  .venv/bin/python benchmarks/vote_patterns.py RUN_DIR DATA --gold-column label [--from-row 1500]
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from autoannotator.run.store import RunStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("data", type=Path, help="the labelled data the run read (same row order)")
    ap.add_argument("--gold-column", required=True)
    ap.add_argument("--from-row", type=int, default=0, help="only rows from this id on (e.g. once a student votes)")
    args = ap.parse_args()

    gold = pd.read_csv(args.data)[args.gold_column].tolist()
    results = [r for r in RunStore(args.run_dir / "run.sqlite").results() if r["row_id"] >= args.from_row]
    names = sorted({m for r in results for m in (r["votes"] or {})})
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if r["label_source"] == "skipped_empty":
            continue
        votes = {m: (r["votes"] or {}).get(m, {}).get("label") for m in names}
        tally = Counter(v for v in votes.values() if v is not None)
        ranked = tally.most_common(2)
        tie = len(ranked) == 2 and ranked[0][1] == ranked[1][1]
        top = ranked[0][0] if ranked else None
        key = " ".join(f"{m}{'.' if v is None else '~' if tie else '+' if v == top else '-'}" for m, v in votes.items())
        groups[key].append({**r, "model_votes": votes})
    print(f"{len(results)} rows from row {args.from_row}; models {', '.join(names)}")
    print(f"{'pattern':48s} {'rows':>5s} {'to LLM':>7s} {'final acc':>9s}  " + "  ".join(f"{m:>9s}" for m in names))
    for key, rows in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        n = len(rows)
        llm = sum(r["label_source"] == "llm_verified" for r in rows)
        final = sum(r["label"] == gold[r["row_id"]] for r in rows) / n
        per_model = [sum(r["model_votes"][m] == gold[r["row_id"]] for r in rows) / n for m in names]
        print(f"{key:48s} {n:5d} {llm:7d} {final:9.3f}  " + "  ".join(f"{a:9.3f}" for a in per_model))


if __name__ == "__main__":
    main()
