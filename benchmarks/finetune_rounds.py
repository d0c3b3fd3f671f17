"""Fine-tuning seconds per round, rounds 1..N, with the incremental rule (or the full retrain, to compare).

A labelled stream like the annotation loop's, without the loop: UCI rows in a seeded shuffled
order, 64 a batch; a row is settled when the two lexicon scorers (VADER, TextBlob) agree (weight =
their agreement share, 1 here), else "LLM-verified" by the simulated verifier (gold with
probability P, the other label otherwise; seeded; not a real LLM). Each time beta new verified
rows have arrived, each trainable model runs one round through ``finetune.plan_round`` and
``finetune.run_round``, exactly what the graph's finetune node runs. The lexicons do not change
between rounds here (the real loop's student votes too): this measures the cost of a round.

Printed per round: rows new / replayed / trained, training seconds, the round's seconds (training
plus scoring the held-out and forgetting slices), held-out balanced accuracy, forgetting-slice
accuracy before/after, accepted; at the end the ratio round N / round 1.

Run:  .venv/bin/python benchmarks/finetune_rounds.py ../shared/data/uci-sentences --beta 100 --rounds 10
      (add --full for the old rule: every round retrains on everything, 3 epochs)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from autoannotator.config import FinetuneSettings
from autoannotator.finetune import plan_round, run_round
from autoannotator.slm.lexicon import TextBlobScorer, VaderScorer

LABELS = ["positive", "negative"]


def stream(texts: list[str], gold: np.ndarray, p: float, seed: int) -> list[dict]:
    """Records in processing order (a shuffled order), as the run store would hold them."""
    order = np.random.default_rng(seed).permutation(len(texts))
    shuffled = [texts[i] for i in order]
    vader, blob = VaderScorer(LABELS).predict(shuffled).votes, TextBlobScorer(LABELS).predict(shuffled).votes
    rng = np.random.default_rng(seed + 1)
    records = []
    for j, rid in enumerate(order):
        votes = {"vader": {"label": LABELS[vader[j]] if vader[j] >= 0 else None},
                 "textblob": {"label": LABELS[blob[j]] if blob[j] >= 0 else None}}
        if vader[j] == blob[j] and vader[j] >= 0:
            records.append({"row_id": int(rid), "label": LABELS[vader[j]], "label_source": "slm_consensus",
                            "votes": votes})
        else:
            y = gold[rid] if rng.random() < p else 1 - gold[rid]
            records.append({"row_id": int(rid), "label": LABELS[y], "label_source": "llm_verified", "votes": votes})
    return records


def build(name: str, seed: int, device: str):
    if name == "student":
        from autoannotator.slm.student import MiniLMStudent
        return MiniLMStudent(LABELS, device=device, seed=seed)
    from autoannotator.slm.tfidf import TfidfStudent
    return TfidfStudent(LABELS, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path, help="folder of CSV files with text,label columns")
    ap.add_argument("--beta", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--p", type=float, default=0.9, help="simulated verifier accuracy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="student,tfidf")
    ap.add_argument("--full", action="store_true", help="the old rule: retrain on everything, cfg.epochs epochs")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = ap.parse_args()

    df = pd.concat([pd.read_csv(f) for f in sorted(args.data_dir.glob("*.csv"))], ignore_index=True)
    texts = df["text"].astype(str).tolist()
    gold = np.array([LABELS.index(x) for x in df["label"]])
    records = stream(texts, gold, args.p, args.seed)
    cfg = FinetuneSettings(incremental=not args.full)
    names = args.models.split(",")
    models = {n: build(n, args.seed, args.device) for n in names}
    n_verified = sum(r["label_source"] == "llm_verified" for r in records)
    print(f"{len(texts)} rows, {n_verified} verified by the simulated verifier (P = {args.p}); beta {args.beta}; "
          f"rule: {'full retrain' if args.full else 'incremental'} ({cfg.round_size_factor} x beta rows a round, "
          f"replay share {cfg.replay_share}, {cfg.incremental_epochs if not args.full else cfg.epochs} epoch(s))")
    print(f"{'round':>5} {'model':>8} {'rows':>6} {'new':>5} {'replay':>6} {'train_s':>8} {'round_s':>8} "
          f"{'held-out bal':>12} {'forget before/after':>20} accepted")
    seconds: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    seen_upto, verified_at_last, round_ = 0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for stop in range(args.batch, len(records) + args.batch, args.batch):
            upto = records[:stop]
            n_ver = sum(r["label_source"] == "llm_verified" for r in upto)
            if n_ver - verified_at_last < args.beta:
                continue
            round_ += 1
            for name in names:
                plan = plan_round(upto, LABELS, cfg, beta=args.beta, seen_upto=seen_upto, round_=round_,
                                  seed=args.seed)
                started = time.perf_counter()
                models[name], rec = run_round(models[name], plan, texts.__getitem__, cfg, round_, Path(tmp))
                wall = time.perf_counter() - started
                seconds[name].append((rec["train_seconds"], wall))
                print(f"{round_:>5} {name:>8} {len(plan.train):>6} {plan.n_new:>5} {plan.n_replay:>6} "
                      f"{rec['train_seconds']:>8.2f} {wall:>8.2f} {rec['holdout_balanced_acc_after']!s:>12} "
                      f"{rec['forgetting_acc_before']!s:>9} / {rec['forgetting_acc_after']!s:<8} {rec['accepted']}",
                      flush=True)
            seen_upto, verified_at_last = len(upto), n_ver
            if round_ >= args.rounds:
                break
    for name, s in seconds.items():
        if len(s) >= 2:
            print(f"{name}: round {len(s)} / round 1: training {s[-1][0] / s[0][0]:.2f}x "
                  f"({s[0][0]:.2f} s -> {s[-1][0]:.2f} s), whole round {s[-1][1] / s[0][1]:.2f}x; "
                  f"total training {sum(x[0] for x in s):.1f} s over {len(s)} rounds")
    if round_ < args.rounds:
        print(f"only {round_} rounds: the file ran out of verified rows (lower --beta for more)")


if __name__ == "__main__":
    main()
