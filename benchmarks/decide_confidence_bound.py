"""How much the voters' confidences say, on a finished run's recorded votes: each SLM's accuracy by
confidence quintile (second half of the rows), and an upper bound for routing: a posterior fitted to
the GOLD labels on vote x confidence-quintile features (in-sample: what no run can know), then the
least certain share of rows given the seeded simulated verifier's answer.

Usage: PYTHONPATH=. .venv/bin/python benchmarks/decide_confidence_bound.py RUN_DIR DATA.csv [--p 0.9]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).parent))
from decide_replay import load_run

from autoannotator.data import load_dataset
from autoannotator.task import LabelDef, build_task
from autoannotator.verify.simulated import SimulatedVerifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--gold-column", default="label")
    ap.add_argument("--p", type=float, default=0.9)
    a = ap.parse_args()
    ds = load_dataset(a.data, None, a.gold_column, 4000)
    names = sorted({x for x in ds.gold if x})
    idx = {n: i for i, n in enumerate(names)}
    sim = SimulatedVerifier(ds.gold, build_task("x", [LabelDef(name=n) for n in names], ds.text_column), a.p)
    batches, book, models = load_run(a.run_dir, names)
    n = len(ds.texts)
    g = np.array([idx.get(x, -1) for x in ds.gold])
    order = [r for b in batches for r in b][n // 2:]
    V = np.array([book[r][0] for r in range(n)])
    C = np.array([book[r][1] for r in range(n)])
    for j, m in enumerate(models):
        v, c, gg = V[order, j], C[order, j], g[order]
        has = v >= 0
        qs = np.quantile(c[has], [0, .2, .4, .6, .8, 1.0])
        acc = [round(float((v == gg)[has & (c >= lo) & (c <= hi)].mean()), 3) for lo, hi in zip(qs[:-1], qs[1:])]
        print(f"{m}: coverage {has.mean():.3f}, accuracy {(v[has] == gg[has]).mean():.3f}, by confidence quintile {acc}")
    feats = []
    for j in range(V.shape[1]):
        has = V[:, j] >= 0
        b = np.searchsorted(np.quantile(C[has, j], [.2, .4, .6, .8]), C[:, j])
        feats += [((V[:, j] == lab) & (b == k)).astype(float) for lab in range(len(names)) for k in range(5)]
    X = np.stack(feats, 1)
    post = LogisticRegression(C=10, max_iter=1000).fit(X, g).predict_proba(X)
    llm = np.array([idx[sim.answer(r)] for r in range(n)])
    print(f"gold-fitted posterior's own label: {(post.argmax(1) == g).mean():.3f}")
    for share in (0.05, 0.1, 0.15, 0.2, 0.3):
        final = post.argmax(1)
        ask = np.argsort(post.max(1))[:int(share * n)]
        final[ask] = llm[ask]
        print(f"ask the least certain {share:.0%}: accuracy {(final == g).mean():.3f}")


if __name__ == "__main__":
    main()
