"""What the student learns from its first hard-sample pool, with the old [CLS] head and the mean-pooled one.

The pool is what the annotation loop would collect: rows where the two lexicon scorers (VADER,
TextBlob) do not agree, in file order, labelled by the simulated verifier (gold with probability
P, the other label otherwise; seeded). The first N of them are split 80/20 into train and
held-out, the student is fine-tuned once with the default recipe, and scored three ways:
held-out (plain and balanced accuracy against the simulated labels, what the vote gate sees)
and accuracy against gold on every row and on the hard rows. Simulated verifier: not a real LLM.

Run:  .venv/bin/python benchmarks/student_first_round.py ../shared/data/uci-sentences --n 260
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from autoannotator.config import FinetuneSettings
from autoannotator.finetune import chance_level, holdout_scores
from autoannotator.slm.lexicon import TextBlobScorer, VaderScorer
from autoannotator.slm.student import MiniLMStudent, minilm_path
from autoannotator.slm.torch_infer import quiet_transformers

LABELS = ["positive", "negative"]


class ClsHeadStudent(MiniLMStudent):
    """The previous design: ``AutoModelForSequenceClassification`` (a head on BERT's [CLS] pooler)."""

    def __init__(self, labels, **kwargs):
        from transformers import AutoModelForSequenceClassification

        super().__init__(labels, **kwargs)
        with quiet_transformers():
            self.model = AutoModelForSequenceClassification.from_pretrained(
                minilm_path(), num_labels=len(labels)).to(self.device).eval()

    def _param_groups(self, cfg):
        enc_ids = {id(p) for p in self.model.base_model.parameters()}
        enc = [p for p in self.model.parameters() if id(p) in enc_ids]
        head = [p for p in self.model.parameters() if id(p) not in enc_ids]
        return [{"params": enc, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
                {"params": head, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path, help="folder of CSV files with text,label columns")
    ap.add_argument("--n", type=int, default=260, help="hard samples in the first pool (train + held-out)")
    ap.add_argument("--p", type=float, default=0.9, help="simulated verifier accuracy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = ap.parse_args()

    frames = [pd.read_csv(f) for f in sorted(args.data_dir.glob("*.csv"))]
    df = pd.concat(frames, ignore_index=True)
    texts = df["text"].astype(str).tolist()
    gold = np.array([LABELS.index(x) for x in df["label"]])
    vader, blob = VaderScorer(LABELS).predict(texts).votes, TextBlobScorer(LABELS).predict(texts).votes
    hard = np.flatnonzero(~((vader == blob) & (vader >= 0)))
    rng = np.random.default_rng(args.seed)
    verified = np.where(rng.random(len(gold)) < args.p, gold, 1 - gold)
    pool = hard[:args.n]
    hold, train = pool[:len(pool) // 5], pool[len(pool) // 5:]
    print(f"{len(texts)} rows, {len(hard) / len(texts):.1%} hard; pool {len(pool)}: train {len(train)}, "
          f"held-out {len(hold)}; simulated verifier P = {args.p}")
    print(f"label share in the training pool: {np.bincount(verified[train], minlength=2) / len(train)}; "
          f"chance (balanced) {chance_level(verified[hold])}")
    cfg = FinetuneSettings()
    for name, cls in (("[CLS] head (before)", ClsHeadStudent), ("mean-pooled head (now)", MiniLMStudent)):
        student = cls(LABELS, device=args.device, seed=args.seed)
        started = time.perf_counter()
        student.train_on([texts[i] for i in train], verified[train], cfg)
        acc, bal = holdout_scores(student, [texts[i] for i in hold], verified[hold])
        votes = student.predict_ungated(texts).votes
        print(f"{name:24s} held-out acc {acc:.3f} balanced {bal:.3f} | vs gold: all rows "
              f"{(votes == gold).mean():.3f}, hard rows {(votes[hard] == gold[hard]).mean():.3f} "
              f"| predicts 'negative' on {(votes == 1).mean():.1%} | {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
