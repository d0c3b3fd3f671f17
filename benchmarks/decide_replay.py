"""Replay a finished run's recorded SLM votes (and confidences) through the decision layer under other
settings, with the bench's seeded simulated verifier: a quick, approximate comparison of decision
rules (the student's training, which depends on the labels the rule produced, is NOT replayed: every
variant sees the votes the recorded run's student cast).

Usage: PYTHONPATH=. .venv/bin/python benchmarks/decide_replay.py RUN_DIR DATA.csv [--gold-column label]
       [--bins 1,2,3] [--p 0.9] [--budget 0.1] [--margin 0.02] [--explore] [--posterior logistic] [--paper]
"""
from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import numpy as np

from autoannotator.data import load_dataset
from autoannotator.decide.audit import AuditSampler, default_audit_size
from autoannotator.decide.budget import LLMBudget
from autoannotator.decide.online import OnlineDecider
from autoannotator.ensemble import tally
from autoannotator.task import LabelDef, build_task
from autoannotator.verify.simulated import SimulatedVerifier


def load_run(run_dir: Path, labels: list[str]) -> tuple[list[list[int]], dict, list[str]]:
    """Batches of row ids in processing order, row id -> (votes, confidences, U), model names."""
    db = sqlite3.connect(run_dir / "run.sqlite")
    rows = db.execute("SELECT row_id, votes, uncertainty, batch FROM results ORDER BY batch, rowid").fetchall()
    idx = {name: i for i, name in enumerate(labels)}
    models = list(json.loads(rows[0][1]).keys())
    batches: dict[int, list[int]] = {}
    book = {}
    for rid, votes, u, b in rows:
        v = json.loads(votes)
        book[rid] = ([idx.get(v[m]["label"], -1) for m in models], [float(v[m]["p"] or 0.0) for m in models], u)
        batches.setdefault(b, []).append(rid)
    return [batches[b] for b in sorted(batches)], book, models


def load_replay(run_dir: Path, data: Path, gold_column: str, p: float):
    """(batches, book, models, gold label indices, answer(row) -> the seeded simulated verifier's label index)."""
    ds = load_dataset(data, None, gold_column, 4000)
    names = sorted({x for x in ds.gold if x})
    task = build_task("label these reviews for sentiment", [LabelDef(name=n) for n in names], ds.text_column)
    sim = SimulatedVerifier(ds.gold, task, p, seed=0)
    idx = {n: i for i, n in enumerate(names)}
    batches, book, models = load_run(run_dir, names)
    return batches, book, models, [idx.get(x, -1) for x in ds.gold], lambda r: idx[sim.answer(r)]


def play(d: OnlineDecider, batches, book, answer, n_labels: int):
    """Each recorded batch through ``d`` as the annotation graph would: plan, ask, settle. Yields (rows asked,
    the batch's decisions)."""
    for ids in batches:
        votes = np.array([book[r][0] for r in ids])
        conf = np.array([book[r][1] for r in ids])
        u = [book[r][2] for r in ids]
        live = [x is not None for x in u]
        plan = d.plan(ids, votes, uncertainty=u, live=live, confidence=conf)
        answers = {r: answer(r) for r in plan.ask}
        audit = {r: answer(r) for r in plan.audit}
        majority = tally(votes, n_labels, 2)[0].tolist()  # the paper's settled label (min_votes = 2)
        yield len(answers), d.settle(ids, answers, audit, live=live, majority=majority)


def replay(batches, book, models, n_rows, gold, answer, bins: int, budget: float | None, seed: int = 0,
           margin: float = 0.02, explore: bool = False, routing: str = "calibrated",
           posterior_model: str = "patterns", paper_cap: bool = False) -> dict:
    n_labels = max(2, len(set(gold)))
    d = OnlineDecider(n_rows, n_labels, models, routing=routing,
                      confidence_bins=bins, budget=LLMBudget(n_rows, share=budget), margin=margin, explore=explore,
                      posterior_model=posterior_model, paper_cap=paper_cap,
                      audit=AuditSampler(default_audit_size(n_rows), n_rows, seed=seed))
    final = np.full(n_rows, -1)
    source = {}
    calls = 0
    for asked, decisions in play(d, batches, book, answer, n_labels):
        calls += asked
        for rid, dec in decisions.items():
            final[rid], source[rid] = dec.label, dec.source
    for rid, dec in d.relabel().items():
        final[rid], source[rid] = dec.label, dec.source
    g = np.asarray(gold)
    settled = [r for r, s in source.items() if s == "slm_consensus"]
    est = d.audit_estimate().get("slm_consensus", {})
    return {"routing": routing, "bins": bins, "budget": budget, "accuracy": round(float((final == g).mean()), 4),
            "call_share": round(calls / n_rows, 4), "audit_estimate": est.get("estimate"),
            "audit_interval": est.get("interval"),
            "settled_true": round(float((final[settled] == g[settled]).mean()), 4) if settled else None,
            "margin": margin, "explore": explore, "posterior": posterior_model, "paper_cap": paper_cap,
            "paper_share": d.paper_share()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--gold-column", default="label")
    ap.add_argument("--bins", default="1,2,3")
    ap.add_argument("--p", type=float, default=0.9)
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--explore", action="store_true", help="route on the patterns' lower bounds")
    ap.add_argument("--posterior", default="patterns", help="patterns or logistic (OnlineDecider.posterior_model)")
    ap.add_argument("--paper-cap", action="store_true", help="cap the share asked at the paper rule's")
    ap.add_argument("--paper", action="store_true", help="also the paper rule (U >= 1e-6) on the same votes")
    a = ap.parse_args()
    batches, book, models, gold, answer = load_replay(a.run_dir, a.data, a.gold_column, a.p)
    if a.paper:
        print(json.dumps(replay(batches, book, models, len(gold), gold, answer, 1, None, routing="paper")), flush=True)
    for b in (int(x) for x in a.bins.split(",")):
        print(json.dumps(replay(batches, book, models, len(gold), gold, answer, b, a.budget, margin=a.margin,
                                explore=a.explore, posterior_model=a.posterior, paper_cap=a.paper_cap)),
              flush=True)


if __name__ == "__main__":
    main()
