"""Before the first batch: the meta-controller turns the request into a plan (task, k models, code).

Builds the controller's context (tools, hints for a weak LLM, deterministic fallbacks), runs the
controller graph, and writes ``plan.json`` / ``plan.md`` in the run directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoannotator.deploy.codegen import write_deployment_code
from autoannotator.deploy.probe import ProbeReport, probe_models, rank_by_probe
from autoannotator.deploy.proxy import TRAINABLE_BUILTINS, DeploymentSpec, ModelDeployment
from autoannotator.discovery.hub import SearchModelsArgs, search_models
from autoannotator.graphs.controller import ControllerContext, PlanDraft, run_controller
from autoannotator.prompts import render
from autoannotator.slm.catalog import build_model, default_selection
from autoannotator.task import TaskSpec
from autoannotator.tools.registry import default_registry

N_PROBE_SAMPLES = 30
N_PROBE_CANDIDATES = 6
TRAINABLE = "student"


def probe_samples(texts: list[str], n: int = N_PROBE_SAMPLES) -> list[str]:
    """Evenly spread non-empty texts: a probe should see the whole file, not its first rows."""
    live = [t for t in texts if t.strip()]
    step = max(1, len(live) // n)
    return live[::step][:n]


def _frozen(specs: list[str]) -> list[str]:
    return [s for s in specs if s not in TRAINABLE_BUILTINS]


def deployment_spec_for(task: TaskSpec, frozen_specs: list[str], settings: Any) -> DeploymentSpec | None:
    """What the sandboxed worker serves: the frozen models (the trainable student stays in-process).

    Each is named by its full spec, so its votes carry the same key whether it runs here or there.
    """
    if not frozen_specs:
        return None
    return DeploymentSpec(task_labels=task.label_names, models=[
        ModelDeployment(name=spec, spec=spec, device=settings.device, batch_size=settings.batch_size,
                        max_text_chars=settings.max_text_chars)
        for spec in frozen_specs])


def deployment_spec(plan: PlanDraft, settings: Any) -> DeploymentSpec | None:
    return deployment_spec_for(plan.task, [s["spec"] for s in plan.selection if not s.get("trainable")], settings)


def _hints(settings: Any) -> Callable[[str, PlanDraft], str]:
    """The step-by-step hint a weak model gets with each forced tool call (prompts/weak_hint.md)."""
    def hint(phase: str, plan: PlanDraft) -> str:
        specs = [c["spec"] for c in plan.candidates]
        agree = {c["spec"]: c.get("agreement_with_llm") for c in (plan.probe or {}).get("candidates", [])}
        return render("weak_hint.md", phase=phase, query=repr(plan.instruction), labels=plan.task.label_names,
                      specs=specs[:3], probe=json.dumps([s for s in specs if s not in TRAINABLE_BUILTINS][:N_PROBE_CANDIDATES]),
                      options=", ".join(f"{s} (agreement {agree.get(s)})" for s in specs[:8]), k=settings.k,
                      trainable=TRAINABLE, deploy=json.dumps(_frozen([s["spec"] for s in plan.selection])))

    return hint


def _fallbacks(ctx_ref: list[ControllerContext], settings: Any) -> Callable[[PlanDraft], None]:
    """Decide deterministically whatever the LLM left undone; plan.decided_by says so."""

    def fill(plan: PlanDraft) -> None:
        ctx = ctx_ref[0]
        if not plan.candidates:
            found = search_models(SearchModelsArgs(query=plan.instruction, labels=plan.task.label_names, limit=10),
                                  settings, ctx)
            plan.candidates = [c.model_dump(mode="json") for c in found.candidates]
            plan.decided_by["candidates"] = f"fallback: search_models ({found.mode})"
        if plan.probe is None or not any(c.get("loaded") for c in plan.probe.get("candidates", [])):
            # The trainable student runs in-process (it trains there); probing its untrained head says nothing.
            specs = [c["spec"] for c in plan.candidates if c["spec"] not in TRAINABLE_BUILTINS][:N_PROBE_CANDIDATES]
            samples = ctx.samples[:len(ctx.llm_labels)] if ctx.llm_labels else ctx.samples
            plan.probe = probe_models(specs, samples, plan.task.label_names, ctx.sandbox, ctx.run_dir,
                                      llm_labels=ctx.llm_labels).model_dump(mode="json")
            plan.decided_by["probe"] = "fallback: probe of the top candidates"
        if not plan.selection:
            ranked = [s for s in rank_by_probe(ProbeReport.model_validate(plan.probe), len(plan.candidates))
                      if s != TRAINABLE][:settings.k - 1]
            # Too few usable probed candidates: complete with the offline catalog's default choice.
            ranked += [s for s in default_selection(plan.task, settings.k) if s not in ranked and s != TRAINABLE]
            ranked = ranked[:settings.k - 1] + [TRAINABLE]
            built = [ctx.build_model(s) for s in ranked]
            plan.selection = [{"spec": s, "reason": "ranked by probe agreement with the LLM" if s != TRAINABLE else
                               "trainable: learns from the LLM-verified hard samples", "mapping": m.mapping.mapping,
                               "trainable": m.trainable} for s, m in zip(ranked, built)]
            plan.decided_by["selection"] = "fallback: rank by probe"
        spec = deployment_spec(plan, settings)
        deployed = [m.get("name") for m in ((plan.deployment or {}).get("spec") or {}).get("models", [])]
        # The LLM may have deployed something other than what was finally selected: deploy the selection.
        deploy_ok = bool(plan.deployment and plan.deployment.get("final_code")) and spec is not None \
            and sorted(deployed) == sorted(spec.names)
        if spec is not None and not deploy_ok:
            plan.deployment = write_deployment_code(spec, ctx.run_dir, ctx.sandbox, ctx.samples).model_dump(mode="json")
            plan.decided_by["deployment"] = "fallback: vetted template"

    return fill


def plan_run(settings: Any, *, instruction: str, task: TaskSpec, labels_given: bool, task_source: str,
             texts: list[str], n_rows: int | None = None,
             run_dir: Path, chat: Any, weak_llm: bool, sandbox: Any,
             label_samples: Callable[[TaskSpec, list[str]], list[str]] | None,
             on_event: Callable[[dict], None] = lambda event: None,
             data_fingerprint: str | None = None) -> PlanDraft:
    """The plan for this run: a cached one for the same request and data, else the LLM's (a strong
    model's), else the deterministic choice (a weak model's steps are skipped, and plan.json says why)."""
    plan = PlanDraft(instruction=instruction, task=task, labels_given=labels_given)
    plan.decided_by["task"] = task_source
    ctx_ref: list[ControllerContext] = []
    ctx = ControllerContext(
        settings=settings, run_dir=run_dir, plan=plan, samples=probe_samples(texts),
        n_rows=len(texts) if n_rows is None else n_rows, chat=chat,
        weak_llm=weak_llm, registry=None, hints=_hints(settings), fallbacks=_fallbacks(ctx_ref, settings),
        on_event=on_event, sandbox=sandbox, build_model=lambda spec: build_model(spec, plan.task, settings),
        label_samples=label_samples)
    ctx_ref.append(ctx)
    # The label set is part of the key, so only a plan whose labels are settled can be reused.
    key = None
    if labels_given and getattr(settings, "reuse_plans", True):
        found = _search(plan, settings, ctx)
        key = plan_cache_key(settings, task, data_fingerprint or texts_fingerprint(texts),
                             [c["spec"] for c in found], weak_llm)
        reused = _reuse(key, settings, plan, run_dir, sandbox, ctx.samples)
        if reused is not None:
            on_event({"event": "note", "text": f"reusing the plan of run {reused} (same task, labels, candidates "
                                               "and data)"})
            write_plan(plan, run_dir)
            return plan
        if weak_llm:
            plan.candidates = found
            plan.decided_by["candidates"] = "search_models (offline)"
    if weak_llm and labels_given:
        on_event({"event": "note", "text": "the embedded model cannot plan: choosing the models deterministically"})
        _plan_deterministically(plan, ctx, settings)
    else:
        ctx.registry = default_registry(settings, ctx, group="plan")
        run_controller(ctx, initial_done=["define_task"] if labels_given else [])
    write_plan(plan, run_dir)
    if key is not None:
        _remember(key, settings, plan, run_dir, sandbox)
    return plan


# -- the weak model's shortcut -------------------------------------------------------------------------

WEAK_SKIP_REASON = (
    "the embedded model is known to fail these steps: forced to call each tool, its choices were all replaced "
    "by the fallbacks (README example: probe, selection and deployment), and its labels of the probe samples "
    "are worse than chance (39 of 136 verified rows right), so agreement with them would rank noise")


def _search(plan: PlanDraft, settings: Any, ctx: ControllerContext) -> list[dict]:
    found = search_models(SearchModelsArgs(query=plan.instruction, labels=plan.task.label_names, limit=10),
                          settings, ctx)
    return [c.model_dump(mode="json") for c in found.candidates]


def _plan_deterministically(plan: PlanDraft, ctx: ControllerContext, settings: Any) -> None:
    """Search, probe (no LLM labels), the catalog's ranking among the models that load, the vetted template."""
    if not plan.candidates:
        plan.candidates = _search(plan, settings, ctx)
        plan.decided_by["candidates"] = "search_models (offline)"
    specs = [c["spec"] for c in plan.candidates if c["spec"] != TRAINABLE][:N_PROBE_CANDIDATES]
    plan.probe = probe_models(specs, ctx.samples, plan.task.label_names, ctx.sandbox, ctx.run_dir,
                              llm_labels=None).model_dump(mode="json")
    plan.decided_by["probe"] = "deterministic: probe of the top candidates, without LLM labels"
    usable = rank_by_probe(ProbeReport.model_validate(plan.probe), len(specs))
    catalog = [s for s in default_selection(plan.task, len(specs) + 1) if s != TRAINABLE]
    ranked = [s for s in catalog if s in usable] + [s for s in usable if s not in catalog]
    ranked += [s for s in catalog if s not in ranked]  # too few usable: complete from the catalog
    ranked = ranked[:settings.k - 1] + [TRAINABLE]
    built = [ctx.build_model(s) for s in ranked]
    plan.selection = [{"spec": s, "reason": "the offline catalog's ranking among the probed models that load and "
                       "cover the labels" if s != TRAINABLE else "trainable: learns from the LLM-verified hard samples",
                       "mapping": m.mapping.mapping, "trainable": m.trainable} for s, m in zip(ranked, built)]
    plan.decided_by["selection"] = "deterministic: catalog ranking among usable probed models"
    ctx.fallbacks(plan)  # the deployment: the vetted template, smoke-tested in the sandbox
    if "deployment" in plan.decided_by:
        plan.decided_by["deployment"] = "deterministic: vetted template"
    plan.decided_by["llm"] = f"skipped: {WEAK_SKIP_REASON}"
    plan.notes.append(f"planning skipped the LLM: {WEAK_SKIP_REASON}")


# -- reusing a plan ---------------------------------------------------------------------------------------

PLAN_CACHE_DIR = ".plan-cache"


def texts_fingerprint(texts: list[str]) -> str:
    """Texts as the models see them: the key's data part when the caller has no file fingerprint."""
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def plan_cache_key(settings: Any, task: TaskSpec, data_fingerprint: str, candidates: list[str],
                   weak_llm: bool) -> str:
    """Same task, label set, candidate set, data (the file's fingerprint), k and planner: the same plan."""
    planner = "embedded" if weak_llm else (getattr(settings, "llm_model", None) or "default")
    material = {"instruction": task.instruction, "labels": [lbl.model_dump() for lbl in task.labels],
                "text_column": task.text_column, "candidates": sorted(candidates), "data": data_fingerprint,
                "k": settings.k, "planner": planner, "version": 1}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def _cache_path(settings: Any, key: str) -> Path:
    return Path(settings.runs_dir) / PLAN_CACHE_DIR / f"{key}.json"


def cached_plan(settings: Any, task: TaskSpec, data_fingerprint: str) -> dict | None:
    """The cached plan a run on this data would reuse (for the dry run's model list), or None."""
    found = search_models(SearchModelsArgs(query=task.instruction, labels=task.label_names, limit=10), settings, None)
    key = plan_cache_key(settings, task, data_fingerprint, [c.spec for c in found.candidates],
                         bool(getattr(settings, "uses_embedded_llm", False)))
    return _read_cache(settings, key)


def _read_cache(settings: Any, key: str) -> dict | None:
    path = _cache_path(settings, key)
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("key") == key and entry.get("model_specs") else None


def _remember(key: str, settings: Any, plan: PlanDraft, run_dir: Path, sandbox: Any) -> None:
    """Keep a complete plan (its deployment passed its smoke test) for the next run on the same request."""
    final = (plan.deployment or {}).get("final_code")
    if not plan.selection or (plan.deployment and not final):
        return
    code = Path(final).read_text(encoding="utf-8") if final and Path(final).is_file() else None
    entry = {"key": key, "run_dir": str(run_dir), "run": Path(run_dir).name, "sandbox": getattr(sandbox, "name", None),
             "model_specs": [s["spec"] for s in plan.selection], "plan": plan.to_json(), "code": code}
    path = _cache_path(settings, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry, default=str), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a read-only runs dir costs the next run its shortcut, nothing else
        return


def _reuse(key: str, settings: Any, plan: PlanDraft, run_dir: Path, sandbox: Any, samples: list[str]) -> str | None:
    """Fill ``plan`` from the cache; returns the source run's name, or None on a miss.

    The deployment code is the cached program: written into this run's deploy/ and smoke-tested
    again only when the sandbox backend differs from the one it passed in.
    """
    entry = _read_cache(settings, key)
    if entry is None:
        return None
    old = entry["plan"]
    plan.candidates, plan.cards, plan.probe = old.get("candidates", []), old.get("cards", {}), old.get("probe")
    plan.selection = old.get("selection", [])
    source = entry.get("run")
    plan.decided_by = {"task": plan.decided_by.get("task", ""), "plan": f"reused from run {source}: same task, "
                       "label set, candidate set and data", **{k: f"{v} (in run {source})"
                                                            for k, v in old.get("decided_by", {}).items() if k != "task"}}
    spec = deployment_spec(plan, settings)
    if spec is None:
        plan.deployment = None
    elif entry.get("code") and entry.get("sandbox") == getattr(sandbox, "name", None):
        out = Path(run_dir) / "deploy" / "ensemble"
        out.mkdir(parents=True, exist_ok=True)
        (out / "v1.py").write_text(entry["code"], encoding="utf-8")
        plan.deployment = {**(old.get("deployment") or {}), "final_code": str(out / "v1.py"),
                           "spec": spec.model_dump(mode="json"),
                           "note": f"the program that passed its smoke test in run {source}"}
    else:
        plan.deployment = write_deployment_code(spec, run_dir, sandbox, samples).model_dump(mode="json")
        if not plan.deployment.get("final_code"):
            return None
    plan.notes.append(f"plan reused from run {source} ({entry.get('run_dir')})")
    return source


def write_plan(plan: PlanDraft, run_dir: Path) -> None:
    (run_dir / "plan.json").write_text(json.dumps(plan.to_json(), indent=2, default=str), encoding="utf-8")
    lines = [f"# Plan: {plan.instruction}", "", f"Labels: {', '.join(plan.task.label_names)}", "",
             "## Chosen models", "", "| model | trainable | mapping | why |", "| --- | --- | --- | --- |"]
    for s in plan.selection:
        mapping = ", ".join(f"{k}→{v}" for k, v in (s.get("mapping") or {}).items())
        lines.append(f"| {s['spec']} | {s.get('trainable')} | {mapping} | {s.get('reason', '')} |")
    if plan.probe:
        lines += ["", f"## Probe ({plan.probe.get('n_samples')} samples, {plan.probe.get('backend')} sandbox)", "",
                  "| candidate | loaded | covers | abstain rate | agreement with the LLM |",
                  "| --- | --- | --- | --- | --- |"]
        for c in plan.probe.get("candidates", []):
            lines.append(f"| {c['spec']} | {c['loaded']} | {', '.join(c.get('coverage', []))} | "
                         f"{c.get('abstain_rate')} | {c.get('agreement_with_llm')} |")
    if plan.deployment:
        lines += ["", "## Deployment code", "", f"final: `{plan.deployment.get('final_code')}`"]
        lines += [f"- v{v.get('version')} ({v.get('source')}): {'passed' if v.get('passed') else 'failed'} "
                  f"— `{v.get('path')}`" for v in plan.deployment.get("versions", [])]
    lines += ["", "## Who decided", ""] + [f"- {k}: {v}" for k, v in plan.decided_by.items()]
    (run_dir / "plan.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
