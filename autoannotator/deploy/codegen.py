"""``write_deployment_code``: the code that deploys the chosen SLMs, as the paper's meta-controller writes it.

v1 is always the VETTED template (``prompts/deploy_worker.py.jinja``) rendered from a
``DeploymentSpec`` and smoke-tested in the sandbox: it is the fallback, so it must pass first.
With a chat model, the LLM may then replace it with its own full program (structured output,
``code``); each failing smoke test goes back to the LLM for a repair, ``max_repairs`` times at
most; if none passes, the template is used and ``fell_back_to_template`` says so. An LLM version
passes only if it also SERVES the votes it printed, as a worker (``serve_check``): ``--smoke``
alone is the program's own word. Every version is kept: ``RUN/deploy/ensemble/v<N>.py`` and
``v<N>.smoke.json``. Generated code never runs in this process, only in the sandbox.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from autoannotator.prompts import py_literal, render, render_code  # noqa: F401  (py_literal: part of this API)
from autoannotator.sandbox import Sandbox, SandboxError, SandboxLimits, SandboxResult
from autoannotator.deploy.proxy import (
    MODELS_DIR,
    SAMPLES_FILE,
    DeploymentSpec,
    ModelDeployment,
    Preprocess,
    SandboxedEnsemble,
    stage_work_dir,
)

__all__ = ["DeploymentResult", "DeploymentSpec", "DeploymentVersion", "ModelDeployment", "Preprocess",
           "RESULT_MODEL", "render_deployment", "render_template",
           "write_deployment_code"]

TEMPLATE = "deploy_worker.py.jinja"
SMOKE_REPORT = "smoke_report.json"  # where the template also writes its full --smoke summary
MAX_CODE_CHARS = 100_000
DEFAULT_SAMPLES = ["I love this, it works perfectly.", "Terrible. It broke after one day.", "It arrived on Tuesday."]
SMOKE_LIMITS = SandboxLimits(memory_mb=4096, timeout_s=300)
Source = Literal["template", "llm", "llm-repair"]


def render_template(name: str, **variables: Any) -> str:
    """Render prompts/<name> strictly: a missing variable raises ``jinja2.UndefinedError``."""
    return render_code(name, **variables)


def render_deployment(spec: DeploymentSpec) -> str:
    return render_template(TEMPLATE, task_labels=list(spec.task_labels),
                           models=[m.model_dump(mode="json") for m in spec.models],
                           samples_file=SAMPLES_FILE, models_dir=MODELS_DIR, smoke_report=SMOKE_REPORT)


class DeploymentVersion(BaseModel):
    version: int
    source: Source
    path: str
    smoke_path: str
    passed: bool
    error: str | None = None  # one line: why the smoke test failed


class DeploymentResult(BaseModel):
    final_code: str | None = Field(description="the program to deploy; None when even the template failed")
    spec: DeploymentSpec
    versions: list[DeploymentVersion]
    backend: str
    fell_back_to_template: bool
    error: str | None = None
    note: str | None = None


RESULT_MODEL = DeploymentResult


class GeneratedProgram(BaseModel):
    code: str = Field(description="the COMPLETE Python program, nothing else (no markdown fences)")


def check_smoke(result: SandboxResult, spec: DeploymentSpec, n: int) -> tuple[bool, str | None, dict | None]:
    """(passed, one-line error, summary): the exit code AND the summary's content must both be right."""
    if result.timed_out or result.killed_reason:
        return False, result.killed_reason or "timed out", None
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    try:
        summary = json.loads(lines[-1]) if lines else None
    except ValueError:
        summary = None
    stderr_last = next((ln.strip() for ln in reversed(result.stderr.splitlines()) if ln.strip()), "")
    if not isinstance(summary, dict) or not isinstance(summary.get("models"), dict):
        return False, (f"exit code {result.exit_code}, no JSON summary on stdout: {stderr_last}")[:300], None
    for name in spec.names:
        entry = summary["models"].get(name)
        if not isinstance(entry, dict) or not entry.get("loaded") or entry.get("error"):
            why = entry.get("error") if isinstance(entry, dict) else "missing from the summary"
            return False, f"{name}: {why}"[:300], summary
        votes = entry.get("votes")
        if not isinstance(votes, list) or len(votes) != n or not all(
                isinstance(v, int) and -1 <= v < len(spec.task_labels) for v in votes):
            return False, f"{name}: expected {n} votes in [-1, {len(spec.task_labels)})", summary
    if summary.get("handler_error"):
        return False, str(summary["handler_error"])[:300], summary
    if result.exit_code != 0 or summary.get("ok") is not True:
        return False, f"exit code {result.exit_code}: {stderr_last}"[:300], summary
    return True, None, summary


def serve_check(path: Path, spec: DeploymentSpec, sandbox: Sandbox, samples: list[str], summary: dict,
                limits: SandboxLimits) -> str | None:
    """Serve the program as the runner will (a worker) and compare its votes with its smoke test's."""
    try:
        with SandboxedEnsemble.start(path, spec, sandbox, limits=limits, call_timeout_s=limits.timeout_s) as ens:
            served = ens.predict_all(samples)
    except SandboxError as exc:
        return f"serving check: {exc}"[:300]
    for name in spec.names:
        if served[name].votes.tolist() != summary["models"][name]["votes"]:
            return f"serving check: {name} serves other votes than its smoke test printed"
    return None


def smoke_test(code: str, spec: DeploymentSpec, sandbox: Sandbox, samples: list[str], out_dir: Path,
               version: int, source: Source, limits: SandboxLimits = SMOKE_LIMITS) -> DeploymentVersion:
    """Write v<N>.py, run ``--smoke`` in a fresh work dir (nothing a previous version did survives)."""
    path, smoke_path = out_dir / f"v{version}.py", out_dir / f"v{version}.smoke.json"
    path.write_text(code)
    work = Path(tempfile.mkdtemp(prefix="aa-smoke-"))  # short: the socket path limit applies to work dirs
    try:
        stage_work_dir(work, spec, samples)
        result = sandbox.run(path, work, ["--smoke", str(len(samples))], limits)
    except SandboxError as exc:
        result = SandboxResult(exit_code=-1, stdout="", stderr=str(exc), timed_out=False, killed_reason=str(exc),
                               seconds=0.0, backend=sandbox.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    passed, error, summary = check_smoke(result, spec, len(samples))
    if passed and source != "template":  # generated code could pass --smoke yet serve nonsense
        error = serve_check(path, spec, sandbox, samples, summary or {}, limits)
        passed = error is None
    smoke_path.write_text(json.dumps({
        "exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr, "backend": result.backend,
        "seconds": result.seconds, "source": source, "timed_out": result.timed_out,
        "killed_reason": result.killed_reason, "passed": passed, "error": error, "summary": summary}, indent=1))
    return DeploymentVersion(version=version, source=source, path=str(path), smoke_path=str(smoke_path),
                             passed=passed, error=error)


def _strip_fences(code: str) -> str:
    m = re.search(r"```(?:python)?\n(.*?)```", code, re.DOTALL)
    return m.group(1) if m else code


def _ask(chat: Any, user: str) -> str:
    model = chat.with_structured_output(GeneratedProgram, method="function_calling")
    reply = model.invoke([("system", render("codegen_system.md")), ("human", user)])
    program = reply if isinstance(reply, GeneratedProgram) else GeneratedProgram.model_validate(reply)
    code = _strip_fences(program.code).strip() + "\n"
    if len(code) > MAX_CODE_CHARS:
        raise ValueError(f"program of {len(code)} characters (limit {MAX_CODE_CHARS})")
    return code


def _spec_text(spec: DeploymentSpec) -> str:
    return json.dumps(spec.model_dump(mode="json"), indent=1)


def may_customise(sandbox: Sandbox) -> bool:
    """Whether LLM-written code may run in ``sandbox``: not in the vetted-only fallback of ``auto``."""
    return bool(getattr(sandbox, "runs_generated_code", True))


def write_deployment_code(spec: DeploymentSpec, run_dir: Path, sandbox: Sandbox, samples: list[str],
                          chat: Any = None, max_repairs: int = 2, *, n_smoke: int = 4,
                          limits: SandboxLimits = SMOKE_LIMITS) -> DeploymentResult:
    out = Path(run_dir) / "deploy" / "ensemble"
    out.mkdir(parents=True, exist_ok=True)
    picked = [s for s in samples if isinstance(s, str) and s.strip()][:n_smoke] or DEFAULT_SAMPLES[:n_smoke]
    template = render_deployment(spec)
    v1 = smoke_test(template, spec, sandbox, picked, out, 1, "template", limits)
    versions = [v1]

    def result(final: DeploymentVersion | None, fell_back: bool = False, **kw: Any) -> DeploymentResult:
        return DeploymentResult(final_code=final.path if final else None, spec=spec, versions=versions,
                                backend=sandbox.name, fell_back_to_template=fell_back, **kw)

    if not v1.passed:  # nothing to fall back to: the models themselves cannot run here
        return result(None, error=f"the vetted template failed its smoke test: {v1.error}")
    if chat is None or not may_customise(sandbox):  # no isolation: never ask for (or run) LLM-written code
        return result(v1)
    ask = render("codegen_adapt.md", spec=_spec_text(spec), template=template)
    source: Source = "llm"
    for _ in range(max_repairs + 1):
        try:
            code = _ask(chat, ask)
        except Exception as exc:  # the LLM failed to answer in shape: keep the vetted template
            return result(v1, fell_back=True, note=f"LLM gave no program ({type(exc).__name__}: "
                                                   f"{str(exc).splitlines()[0][:200] if str(exc) else ''})")
        if code.strip() == template.strip():
            return result(v1, note="the LLM kept the vetted template unchanged")
        version = smoke_test(code, spec, sandbox, picked, out, len(versions) + 1, source, limits)
        versions.append(version)
        if version.passed:
            return result(version)
        smoke = json.loads(Path(version.smoke_path).read_text())
        ask = render("codegen_repair.md", spec=_spec_text(spec), code=code, exit_code=smoke["exit_code"],
                     error=version.error, stderr=smoke["stderr"][-3000:], stdout=smoke["stdout"][-1000:])
        source = "llm-repair"
    return result(v1, fell_back=True, note=f"no LLM version passed after {max_repairs} repair(s); "
                                           f"last error: {versions[-1].error}")


