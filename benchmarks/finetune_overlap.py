"""Fine-tuning in line vs overlapped with labelling (``finetune.overlap``): wall time and labels.

Runs the AutoAnnotator loop on one labelled file (the bench's own code path, ``Bench.autoannotator``,
with the simulated verifier: gold with probability P, seeded per row; not a real LLM) once per
setting, alternating, and prints per run: accuracy, LLM calls, rounds, the loop's wall seconds,
the seconds it waited for rounds, and how many rows got another label than the in-line run's.

With a simulated verifier the labelling between rounds is CPU work like the training, so on a
machine with few cores an overlapped round competes with it for the same cores: the figure shows
what overlapping buys when nothing waits on the network; with a real LLM the batches spend most
of their time waiting for answers, which the round can use.

Run:  .venv/bin/python benchmarks/finetune_overlap.py ../shared/data/uci-sentences/yelp.csv --beta 250 \\
          --out bench-out/overlap [--repeat 2] [--overlap-first] [--routing paper] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from autoannotator.benchmark.suite import Bench
from autoannotator.config import Settings
from autoannotator.data import load_dataset
from autoannotator.run.store import RunStore
from autoannotator.slm.catalog import default_selection
from autoannotator.task import LabelDef, build_task


def one_run(bench: Bench, specs: list[str], settings: Settings, name: str, beta: int, routing: str) -> dict:
    bench.settings = settings
    start = time.perf_counter()
    row, _ = bench.autoannotator(name, specs, settings.epsilon, beta, False, routing)
    wall = time.perf_counter() - start
    run_dir = bench.out_dir / "runs" / name
    store = RunStore(run_dir / "run.sqlite")
    try:
        labels = [r["label"] for r in store.results()]
        rounds = store.finetune_records()
    finally:
        store.close()
    report = json.loads((run_dir / "report.json").read_text())
    timings = report.get("timings_s", {})
    return {"name": name, "accuracy": row.accuracy, "llm_calls": row.llm_calls, "wall_s": round(wall, 1),
            "finetune_node_s": round(timings.get("finetune", 0.0), 1),
            "finetune_wait_s": round(timings.get("finetune_wait", 0.0), 1),
            "rounds": [{"round": r["round"], "kind": r.get("kind"), "seconds": r.get("seconds"),
                        "accepted": r.get("accepted"), "votes": r.get("votes"), "overlap": r.get("overlap")}
                       for r in rounds],
            "labels": labels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--gold-column", default="label")
    ap.add_argument("--beta", type=int, default=250)
    ap.add_argument("--p", type=float, default=0.9)
    ap.add_argument("--routing", default="paper")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overlap-first", action="store_true", help="start with the overlapped run")
    ap.add_argument("--out", type=Path, default=Path("bench-out/overlap"))
    args = ap.parse_args()

    base = Settings(sandbox="none", seed=args.seed)
    dataset = load_dataset(args.data, None, args.gold_column, base.max_text_chars)
    labels = [LabelDef(name=g) for g in sorted({g for g in dataset.gold if g is not None})]
    task = build_task("label these reviews for sentiment", labels, dataset.text_column)
    specs = base.models or default_selection(task, base.k)
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(base, dataset, task, f"simulated:{args.p}", args.out, print)
    results = []
    try:
        for rep in range(args.repeat):
            for overlap in ((False, True) if (rep + args.overlap_first) % 2 == 0 else (True, False)):
                settings = base.model_copy(update={"finetune": base.finetune.model_copy(update={"overlap": overlap})})
                name = f"{'overlap' if overlap else 'inline'}-{rep}"
                res = one_run(bench, specs, settings, name, args.beta, args.routing)
                res["overlap"] = overlap
                results.append(res)
                print(json.dumps({k: v for k, v in res.items() if k != "labels"}), flush=True)
    finally:
        bench.close()
    reference = next(r for r in results if not r["overlap"])
    for r in results:
        r["labels_differing_from_inline"] = sum(a != b for a, b in zip(r["labels"], reference["labels"]))
        print(f"{r['name']}: accuracy {r['accuracy']}, LLM calls {r['llm_calls']}, wall {r['wall_s']} s, "
              f"waited for rounds {r['finetune_wait_s']} s, labels differing from {reference['name']}: "
              f"{r['labels_differing_from_inline']}")
    (args.out / "overlap.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
