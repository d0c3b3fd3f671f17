"""How sure the logistic posterior is against how right it is, on a finished run's recorded votes, under variants of
its fit, with and without an accuracy target: replays through the decision layer with the bench's seeded
simulated verifier (the student's training is NOT replayed: every variant sees the recorded run's votes).

Variants (the product's fit is ``shipped``; the others are patched in here only, not in the package):
- ``shipped``: C = 1 (sklearn's inverse L2 strength), EM run to its fixed point (at most 50 steps, soft labels
  moving less than 1e-4), warm-started from the previous batch's fit;
- ``five``: the fit before EM ran to convergence: the same, stopped after 5 EM steps;
- ``em+cv``: EM to its fixed point and C chosen from 1, 3, 10, 30, 100 by 3-fold held-out likelihood of the
  LLM's answers, P(a | x) = sum_c P(c | x) C[c, a], on every refit with 60 answers or more.

Per variant and target (none, then the given one) it prints the LLM-call share, the accuracy of the labels as
decided batch by batch and the posterior's mean confidence then ("expects"), and the same after the final relabel.

Usage: PYTHONPATH=. .venv/bin/python benchmarks/decide_calibration_replay.py RUN_DIR DATA.csv
       [--variants shipped,five,em+cv] [--target 0.9] [--p 0.9]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from decide_replay import load_replay, play

from autoannotator.decide import logistic
from autoannotator.decide.audit import AuditSampler, default_audit_size
from autoannotator.decide.online import OnlineDecider

SHIPPED_FIT = logistic.NoisyLogistic.fit
SHIPPED_EM = logistic.EM_MAX_STEPS, logistic.EM_TOL
GRID = (1.0, 3.0, 10.0, 30.0, 100.0)


def _em(n_labels: int, x: np.ndarray, a: np.ndarray, conf: np.ndarray, c: float):
    """The package's EM fit (SHIPPED_FIT: ``fit`` itself may be patched to ``cv_fit`` here), cold-started, at
    inverse L2 strength ``c``."""
    return SHIPPED_FIT(logistic.NoisyLogistic(n_labels, c=c), x, a, conf).model


def _held_out_c(n_labels: int, x: np.ndarray, a: np.ndarray, conf: np.ndarray) -> float:
    fold = np.random.default_rng(0).permutation(len(a)) % 3
    best, best_ll = 1.0, -np.inf
    for c in GRID:
        ll = 0.0
        for f in range(3):
            train, test = fold != f, fold == f
            if len(np.unique(a[train])) < 2:
                return 1.0
            model = _em(n_labels, x[train], a[train], conf, c)
            p = np.zeros((int(test.sum()), n_labels))
            p[:, model.classes_] = model.predict_proba(x[test])
            ll += float(np.log(np.maximum((p @ conf)[np.arange(int(test.sum())), a[test]], 1e-12)).sum())
        if ll > best_ll + 1e-9:
            best, best_ll = c, ll
    return best


def cv_fit():
    def fit(self, x, answers, llm_confusion):
        a = np.asarray(answers, dtype=np.int64)
        if len(a) < logistic.MIN_ANSWERS or len(np.unique(a)) < 2:
            self.model = None
            return self
        conf = np.asarray(llm_confusion, dtype=np.float64)
        if len(a) >= 60:
            self.c = _held_out_c(self.n_labels, x, a, conf)
        self.model = _em(self.n_labels, x, a, conf, self.c)
        return self
    return fit


def replay(batches, book, models, gold: np.ndarray, answer, target: float | None) -> str:
    n = len(gold)
    d = OnlineDecider(n, max(2, int(gold.max()) + 1), models, routing="calibrated", paper_cap=True, target=target,
                      audit=AuditSampler(default_audit_size(n), n, seed=0))
    calls, right, conf = 0, [], []
    for asked, decisions in play(d, batches, book, answer, d.n_labels):
        calls += asked
        for rid, dec in decisions.items():
            right.append(dec.label == gold[rid])
            conf.append(dec.confidence)
    final = {rid: dec for block in d.relabel_blocks() for rid, dec in block.items()}
    f_right = np.mean([dec.label == gold[r] for r, dec in final.items()])
    f_conf = np.mean([dec.confidence for dec in final.values()])
    return (f"target {target}: calls {calls / n:.3f}; as decided: accuracy {np.mean(right):.4f}, expects "
            f"{np.mean(conf):.4f}; final: accuracy {f_right:.4f}, expects {f_conf:.4f}; C at the end {d.logistic.c:g}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--gold-column", default="label")
    ap.add_argument("--variants", default="shipped,five,em+cv")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--p", type=float, default=0.9)
    a = ap.parse_args()
    batches, book, models, gold, answer = load_replay(a.run_dir, a.data, a.gold_column, a.p)
    gold = np.asarray(gold)
    for variant in a.variants.split(","):
        logistic.NoisyLogistic.fit = cv_fit() if variant == "em+cv" else SHIPPED_FIT
        # EM_TOL = 0 never stops early: exactly EM_MAX_STEPS steps, as the fit did before
        logistic.EM_MAX_STEPS, logistic.EM_TOL = (5, 0.0) if variant == "five" else SHIPPED_EM
        for target in (None, a.target):
            print(f"{a.data.name} {variant} " + replay(batches, book, models, gold, answer, target), flush=True)


if __name__ == "__main__":
    main()
