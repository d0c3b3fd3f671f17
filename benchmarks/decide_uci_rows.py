"""Three autoannotator rows of `bench` (paper, calibrated, calibrated at --llm-budget 0.1) on one UCI file,
through the same Bench class the CLI uses (simulated verifier P = 0.9, beta 250, vader+textblob+student,
sandbox none), plus the SLM rows. Usage: PYTHONPATH=. .venv/bin/python benchmarks/decide_uci_rows.py FILE OUT_DIR
[CONFIGS, e.g. paper,calibrated,calibrated:0.1]"""
import sys, json, time
from pathlib import Path
from autoannotator.benchmark.suite import Bench, BenchRow
from autoannotator.benchmark.output import write_results
from autoannotator.config import Settings
from autoannotator.data import load_dataset
from autoannotator.task import LabelDef, build_task
data, out = Path(sys.argv[1]), Path(sys.argv[2])
configs = sys.argv[3].split(",") if len(sys.argv) > 3 else ["paper", "calibrated", "calibrated:0.1"]
settings = Settings(sandbox="none", beta=250, models=["vader", "textblob", "student"])
ds = load_dataset(data, None, "label", settings.max_text_chars)
task = build_task("label these reviews for sentiment", [LabelDef(name=g) for g in sorted({g for g in ds.gold if g})], ds.text_column)
out.mkdir(parents=True, exist_ok=True)
b = Bench(settings, ds, task, "simulated:0.9", out, print)
rows = b.slm_rows(settings.models)
for cfg in configs:
    routing, _, share = cfg.partition(":")
    name = f"autoannotator[{routing}]" + (f" budget={share}" if share else "")
    t = time.time()
    row, _ = b.autoannotator(name, settings.models, 1e-6, 250, False, routing, float(share) if share else None)
    rows.append(row)
    print(name, row.accuracy, row.llm_call_rate, row.audit_estimate, row.audit_interval, row.settled_accuracy, row.llm_unreliable, round(time.time() - t), "s", flush=True)
    write_results(rows, [], {"data": data.name, "instruction": task.instruction, "labels": task.label_names,
                             "n_rows": len(ds.texts), "gold_column": "label", "command": " ".join(sys.argv)}, out)
