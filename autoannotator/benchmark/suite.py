"""Run every labelling strategy on the same labelled data and measure quality, LLM use and time.

Rows: each SLM alone, their majority vote, the verifier alone (``llm_only``), and AutoAnnotator
without and with the beta branch over a sweep of epsilon and beta. The AutoAnnotator rows go
through ``runner.label``, the same code and report as ``autoannotator label``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from autoannotator import runner
from autoannotator.llm.factory import check_reachable, llm_session
from autoannotator.config import Settings
from autoannotator.costs import LLMUsage
from autoannotator.data import Dataset, load_dataset
from autoannotator.ensemble import run_ensemble
from autoannotator.errors import UserError
from autoannotator.metrics import accuracy, macro_f1
from autoannotator.slm.base import TrainableSLM
from autoannotator.slm.catalog import build_model, default_selection
from autoannotator.run.store import RunStore
from autoannotator.task import LabelDef, TaskSpec, build_task
from autoannotator.verify.base import Verifier
from autoannotator.verify.factory import make_verifier

NO_FINETUNE_BETA = 10**9


class BenchRow(BaseModel):
    name: str
    accuracy: float | None
    macro_f1: float | None
    llm_calls: int
    llm_call_rate: float
    llm_tokens_in: int
    llm_tokens_out: int
    est_cost_usd: float
    wall_s: float
    coverage: float | None = None
    epsilon: float | None = None
    beta: int | None = None
    verifier: str = ""
    finetune_rounds: int = 0
    routing: str | None = None  # paper | calibrated (autoannotator rows)
    llm_budget: float | None = None
    audit_calls: int = 0  # apart from llm_calls
    audit_estimate: float | None = None  # settled labels' accuracy estimated from the audit, no gold used
    audit_interval: list[float] | None = None
    settled_accuracy: float | None = None  # their true accuracy (gold), to check the estimate against
    posterior_expects: float | None = None  # the final posterior's mean confidence: an estimate without gold
    llm_unreliable: bool | None = None


class Bench:
    def __init__(self, settings: Settings, dataset: Dataset, task: TaskSpec, verifier: str, out_dir: Path,
                 on_progress: Callable[[str], None]):
        self.settings, self.dataset, self.task, self.out_dir = settings, dataset, task, out_dir
        self.on_progress = on_progress
        self.labels = task.label_names
        self.scored = [i for i, g in enumerate(dataset.gold) if g in set(self.labels)]
        self.gold = [dataset.gold[i] for i in self.scored]
        self.verifier_spec = verifier
        self.stack = ExitStack()
        self.llm = None
        if verifier.startswith("simulated:"):
            try:
                self.p = float(verifier.split(":", 1)[1])
            except ValueError:
                raise UserError(f"--verifier simulated:P needs a number P, got {verifier!r}") from None
            self.verifier_label = f"simulated verifier (P={self.p})"
        elif verifier == "human":  # the paper's strongest setting; practical on small samples only
            self.verifier_label = "human verifier"
        elif verifier == "llm":
            self.llm = self.stack.enter_context(llm_session(settings, log_dir=out_dir))
            check_reachable(self.llm)
            self.verifier_label = f"LLM {self.llm.model_id}" + (" (embedded)" if self.llm.embedded else "")
        else:
            raise UserError(f"unknown --verifier {verifier!r}; use llm, human or simulated:P")

    def close(self) -> None:
        self.stack.close()

    # -- verifiers --------------------------------------------------------------------------------
    def make_verifier(self, task: TaskSpec, run_dir: Path, run_id: str) -> Verifier:
        if self.verifier_spec == "human":
            return make_verifier("human", task, run_dir, run_id, self.settings)
        if self.llm is None:
            return make_verifier("simulated", task, run_dir, run_id, self.settings, gold=self.dataset.gold, p=self.p)
        return make_verifier("llm", task, run_dir, run_id, self.settings, llm=self.llm)

    def verifier_info(self) -> dict[str, Any]:
        if self.verifier_spec == "human":
            return {"human": True, "description": self.verifier_label}
        if self.llm is None:
            return {"simulated": True, "description": self.verifier_label}
        return {"base_url": self.llm.base_url, "embedded": self.llm.embedded}

    # -- scoring ----------------------------------------------------------------------------------
    def _row(self, name: str, pred: list[str | None], wall_s: float, usage=None, **extra) -> BenchRow:
        scored = [pred[i] for i in self.scored]
        n = len(pred)
        cost = self.settings.prices.cost(usage.tokens_in, usage.tokens_out) if usage else 0.0
        return BenchRow(
            name=name, accuracy=_round(accuracy(scored, self.gold)), macro_f1=_round(macro_f1(scored, self.gold,
                                                                                              self.labels)),
            llm_calls=usage.calls if usage else 0, llm_call_rate=round(usage.calls / n, 4) if usage and n else 0.0,
            llm_tokens_in=usage.tokens_in if usage else 0, llm_tokens_out=usage.tokens_out if usage else 0,
            est_cost_usd=round(cost, 6), wall_s=round(wall_s, 2),
            verifier=self.verifier_label if usage else "", **extra)

    # -- the strategies ---------------------------------------------------------------------------
    def slm_rows(self, specs: list[str]) -> list[BenchRow]:
        start = time.perf_counter()
        models = [build_model(spec, self.task, self.settings) for spec in specs]
        load_s = time.perf_counter() - start
        texts = self.dataset.texts
        rows = []
        per_model_s = []
        votes = []
        for model in models:
            start = time.perf_counter()
            pred = model.predict(texts)
            per_model_s.append(time.perf_counter() - start)
            votes.append(pred.votes)
            labels = [self.labels[v] if v >= 0 else None for v in pred.votes]
            coverage = sum(v >= 0 for v in pred.votes) / max(1, len(texts))
            note = " (untrained: abstains)" if isinstance(model, TrainableSLM) and not model.is_trained else ""
            rows.append(self._row(f"slm:{model.name}{note}", labels, per_model_s[-1] + load_s / len(models),
                                  coverage=round(coverage, 4)))
        start = time.perf_counter()
        out = run_ensemble(models, texts, len(self.labels), min_votes=1)
        majority = [self.labels[m] if m >= 0 else None for m in out.majority]
        rows.append(self._row("majority_vote", majority, time.perf_counter() - start + load_s,
                              coverage=round(float((out.majority >= 0).mean()), 4)))
        return rows

    def llm_only(self) -> BenchRow:
        run_dir = self.out_dir / "runs" / "llm_only"
        run_dir.mkdir(parents=True, exist_ok=True)
        verifier = self.make_verifier(self.task, run_dir, "llm_only")
        items = [(i, t) for i, t in enumerate(self.dataset.texts) if t.strip()]
        start = time.perf_counter()
        answers = {r.row_id: r.label for r in verifier.verify(items)}
        pred = [answers.get(i) for i in range(len(self.dataset.texts))]
        return self._row("llm_only", pred, time.perf_counter() - start, usage=verifier.ledger("llm_only"))

    def autoannotator(self, name: str, specs: list[str], epsilon: float, beta: int, trajectory: bool,
                      routing: str = "paper", llm_budget: float | None = None) -> tuple[BenchRow, list[dict]]:
        # The same models as the other rows: the comparison is of strategies, not of model choices.
        update: dict = {"epsilon": epsilon, "beta": beta, "models": specs, "routing": routing,
                        "llm_budget": llm_budget}
        if beta == NO_FINETUNE_BETA:  # no fine-tuning means no warm-start round either
            update["finetune"] = self.settings.finetune.model_copy(update={"warm_start": False})
        settings = self.settings.model_copy(update=update)
        run_dir = self.out_dir / "runs" / name.replace(" ", "_").replace("[", "").replace("]", "")
        start = time.perf_counter()
        report, _ = runner.label(
            settings, self.dataset.path, instruction=self.task.instruction, labels=self.task.labels,
            text_column=self.dataset.text_column, gold_column=self.dataset.gold_column, run_dir=run_dir,
            verifier_factory=self.make_verifier, verifier_info=self.verifier_info(),
        )
        wall = time.perf_counter() - start
        store = RunStore(run_dir / "run.sqlite")
        try:
            pred = [r["label"] for r in store.results()]
        finally:
            store.close()
        usage = LLMUsage(calls=report["llm_calls"], tokens_in=report["llm_tokens_in"],
                         tokens_out=report["llm_tokens_out"])
        row = self._row(name, pred, wall, usage=usage, epsilon=epsilon if routing == "paper" else None,
                        beta=None if beta == NO_FINETUNE_BETA else beta, finetune_rounds=report["n_finetune_rounds"],
                        routing=routing, llm_budget=llm_budget, **_decision_fields(report))
        assert row.llm_calls == report["llm_calls"] and row.accuracy == _round(report.get("accuracy"))
        traj = self.trajectory(report, pred) if trajectory and report["finetune_rounds"] else []
        for point in traj:
            point["config"] = name
        return row, traj

    def trajectory(self, report: dict, final: list[str | None]) -> list[dict]:
        """Each trainable SLM's accuracy on all the data, and agreement with the final labels, after each round."""
        points = []
        for rec in report["finetune_rounds"]:
            if not rec.get("weights"):
                points.append({"round": rec["round"], "model": rec["model"], "accepted": False})
                continue
            student = build_model(rec["model"], self.task, self.settings)  # 'student' or 'tfidf'
            student.load(Path(rec["weights"]))
            votes = student.predict_ungated(self.dataset.texts).votes  # what the weights say, voting or not
            pred = [self.labels[v] if v >= 0 else None for v in votes]
            agree = [p == f for p, f in zip(pred, final) if f is not None]
            points.append({"round": rec["round"], "model": rec["model"], "accepted": True, "votes": rec.get("votes"),
                           "pool_train": rec["n_train"], "holdout_balanced_acc_after": rec["holdout_balanced_acc_after"],
                           "accuracy": _round(accuracy([pred[i] for i in self.scored], self.gold)),
                           "agreement_with_final": _round(sum(agree) / len(agree) if agree else None)})
        return points


def _round(x: float | None) -> float | None:
    return round(x, 4) if x is not None else None


def _decision_fields(report: dict) -> dict[str, Any]:
    """The audit's estimate for the settled rows beside their true accuracy, and the LLM verdict."""
    decision = report.get("decision") or {}
    est = ((decision.get("audit") or {}).get("estimates") or {}).get("slm_consensus") or {}
    settled = (report.get("by_label_source") or {}).get("slm_consensus") or {}
    return {"audit_calls": report.get("audit_llm_calls", 0), "audit_estimate": est.get("estimate"),
            "audit_interval": est.get("interval") if est else None, "settled_accuracy": settled.get("accuracy"),
            "posterior_expects": decision.get("expected_accuracy"),
            "llm_unreliable": (decision.get("llm_verdict") or {}).get("unreliable")}


def run_bench(settings: Settings, data: Path, *, instruction: str, gold_column: str, labels: list[LabelDef] | None,
              text_column: str | None, verifier: str, epsilons: list[float], betas: list[int], out_dir: Path,
              trajectory: bool = True, include_llm_only: bool = True, routings: list[str] | None = None,
              budgets: list[float] | None = None,
              on_progress: Callable[[str], None] = lambda msg: None) -> tuple[list[BenchRow], list[dict], dict]:
    """``routings``: the rules to run (default paper and calibrated); ``budgets``: LLM-budget shares
    for a sweep of the calibrated rule (one run each, at the first beta)."""
    routings = ["paper", "calibrated"] if routings is None else routings
    budgets = budgets or []
    for r in routings:
        if r not in ("paper", "calibrated"):
            raise UserError(f"unknown --routing {r!r}; use paper, calibrated or both (comma-separated)")
    for b in budgets:
        if not 0.0 <= b <= 1.0:
            raise UserError(f"--llm-budget takes shares of rows in [0, 1], got {b}")
    dataset = load_dataset(data, text_column, gold_column, settings.max_text_chars)
    if labels is None:
        labels = [LabelDef(name=g) for g in sorted({g for g in dataset.gold if g is not None})]
    task = build_task(instruction, labels, dataset.text_column)
    if (out_dir / "runs").exists():
        shutil.rmtree(out_dir / "runs")  # a benchmark measures this invocation, never an old cache
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(settings, dataset, task, verifier, out_dir, on_progress)
    try:
        specs = settings.models or default_selection(task, settings.k)
        on_progress(f"SLMs alone and their majority vote ({', '.join(specs)})")
        rows = bench.slm_rows(specs)
        if include_llm_only:
            on_progress(f"llm_only: the verifier labels all {len(dataset.texts)} rows")
            rows.append(bench.llm_only())
        trajectories: list[dict] = []
        for routing in routings:
            # epsilon is the paper rule's threshold; the calibrated rule has none to sweep
            for eps in epsilons if routing == "paper" else [epsilons[0]]:
                suffix = f" eps={eps}" if routing == "paper" and len(epsilons) > 1 else ""
                name = f"autoannotator_no_finetune[{routing}]{suffix}"
                on_progress(name)
                rows.append(bench.autoannotator(name, specs, eps, NO_FINETUNE_BETA, False, routing)[0])
                for beta in betas:
                    name = f"autoannotator[{routing}]" + suffix + (f" beta={beta}" if len(betas) > 1 else "")
                    on_progress(name)
                    row, traj = bench.autoannotator(name, specs, eps, beta, trajectory, routing)
                    rows.append(row)
                    trajectories += traj
        budget_routing = "calibrated" if "calibrated" in routings or not routings else routings[0]
        for share in budgets:
            name = f"autoannotator[{budget_routing}] budget={share}"
            on_progress(name)
            row, _ = bench.autoannotator(name, specs, epsilons[0], betas[0], False, budget_routing, share)
            rows.append(row)
        meta = {"data": data.name, "instruction": instruction, "labels": task.label_names,
                "n_rows": len(dataset.texts), "gold_column": gold_column}
        return rows, trajectories, meta
    finally:
        bench.close()
