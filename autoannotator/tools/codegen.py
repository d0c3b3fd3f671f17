"""``write_deployment_code``: the code that deploys the chosen SLMs, as the paper's meta-controller writes it.

v1 is always the VETTED template (``sandbox/deploy_worker.py.jinja``) rendered from a
``DeploymentSpec`` and smoke-tested in the sandbox: it is the fallback, so it must pass first.
With a chat model, the LLM may then replace it with its own full program (structured output,
``code``); each failing smoke test goes back to the LLM for a repair, ``max_repairs`` times at
most; if none passes, the template is used and ``fell_back_to_template`` says so. An LLM version
passes only if it also SERVES the votes it printed, as a worker (``serve_check``): ``--smoke``
alone is the program's own word. Every version is kept: ``RUN/deploy/ensemble/v<N>.py`` and
``v<N>.smoke.json``. Generated code never runs in this process, only in the sandbox.
"""

from __future__ import annotations

import ast
import json
import pprint
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, Field, ValidationError

from autoannotator.sandbox import Sandbox, SandboxError, SandboxLimits, SandboxResult
from autoannotator.slm.sandboxed import (
    MODELS_DIR,
    SAMPLES_FILE,
    DeploymentSpec,
    ModelDeployment,
    Preprocess,
    SandboxedEnsemble,
    stage_work_dir,
)
from autoannotator.tools.base import ToolException, make_tool

__all__ = ["DeploymentResult", "DeploymentSpec", "DeploymentVersion", "ModelDeployment", "Preprocess",
           "RESULT_MODEL", "make_write_deployment_code_tool", "render_deployment", "render_template",
           "write_deployment_code"]

TEMPLATE = "deploy_worker.py.jinja"
SMOKE_REPORT = "smoke_report.json"  # where the template also writes its full --smoke summary
MAX_CODE_CHARS = 100_000
DEFAULT_SAMPLES = ["I love this, it works perfectly.", "Terrible. It broke after one day.", "It arrived on Tuesday."]
SMOKE_LIMITS = SandboxLimits(memory_mb=4096, timeout_s=300)
Source = Literal["template", "llm", "llm-repair"]


def py_literal(value: Any) -> str:
    """A Python literal for plain data only: nothing rendered into the program can become code."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming the missing variable
    text = pprint.pformat(value, width=110, sort_dicts=False)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError):
        same = False
    if not same:
        raise ValueError(f"not plain data: {value!r}"[:200])
    return text


_env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
                          trim_blocks=True, lstrip_blocks=True)
_env.filters["py"] = py_literal


def render_template(name: str, **variables: Any) -> str:
    """Render sandbox/<name> strictly: a missing variable raises ``jinja2.UndefinedError``."""
    source = resources.files("autoannotator.sandbox").joinpath(name).read_text(encoding="utf-8")
    return _env.from_string(source).render(**variables)


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


_SYSTEM = """You write the Python program that deploys small text classifiers for autoannotator.
Return the COMPLETE program in `code`. It runs in a sandbox: no network, Hugging Face offline, writable
only its own directory and /tmp. It may import autoannotator.slm.* (staged next to it), torch,
transformers, numpy and the standard library. Keep the template's contract exactly:
- `python prog.py --smoke N` labels N texts from smoke_samples.json, prints ONE JSON line
  {"ok": bool, "n": N, "models": {name: {"loaded": bool, "error": str|null, "votes": [int]}}} and exits 0 only if all is well;
- `python prog.py` loads every model ONCE, then calls worker_protocol.serve(handler) answering
  {"op": "predict", "texts": [...]} with {"models": {name: {"votes": [...], "proba": [[...]]}}} and
  {"op": "info"} with {"task_labels": [...], "models": [{"name", "native_labels", "mapping"}]}.
Votes are task-label indices (-1: abstain); keep the model names and the label mappings as given."""


def _strip_fences(code: str) -> str:
    m = re.search(r"```(?:python)?\n(.*?)```", code, re.DOTALL)
    return m.group(1) if m else code


def _ask(chat: Any, user: str) -> str:
    model = chat.with_structured_output(GeneratedProgram, method="function_calling")
    reply = model.invoke([("system", _SYSTEM), ("human", user)])
    program = reply if isinstance(reply, GeneratedProgram) else GeneratedProgram.model_validate(reply)
    code = _strip_fences(program.code).strip() + "\n"
    if len(code) > MAX_CODE_CHARS:
        raise ValueError(f"program of {len(code)} characters (limit {MAX_CODE_CHARS})")
    return code


def _spec_text(spec: DeploymentSpec) -> str:
    return json.dumps(spec.model_dump(mode="json"), indent=1)


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
    if chat is None:
        return result(v1)
    ask = (f"The deployment spec:\n{_spec_text(spec)}\n\nThe vetted template program (it passes the smoke test):\n"
           f"{template}\nAdapt it where the spec calls for it, or return it unchanged.")
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
        ask = (f"The deployment spec:\n{_spec_text(spec)}\n\nYour program:\n{code}\nfailed its smoke test "
               f"(exit code {smoke['exit_code']}): {version.error}\nstderr (end):\n{smoke['stderr'][-3000:]}\n"
               f"stdout (end):\n{smoke['stdout'][-1000:]}\nReturn the complete fixed program.")
        source = "llm-repair"
    return result(v1, fell_back=True, note=f"no LLM version passed after {max_repairs} repair(s); "
                                           f"last error: {versions[-1].error}")


# --- the tool --------------------------------------------------------------------------------

class DeployModelArgs(BaseModel):
    spec: str = Field(description="a chosen model, e.g. 'vader' or 'hf:org/name'")
    mapping: dict[str, str | None] | None = Field(None, description="its label -> task label (null: no opinion)")
    batch_size: int = Field(64, ge=1, le=4096)
    max_length: int = Field(256, ge=8, le=8192, description="tokens per text")
    preprocess: Preprocess = Preprocess()


class WriteDeploymentCodeArgs(BaseModel):
    models: list[DeployModelArgs] = Field(min_length=1, max_length=16, description="the frozen models to deploy")
    customise: bool = Field(True, description="let the LLM adapt the vetted template (false: use it as is)")


def context_sandbox(context: Any, settings: Any = None) -> Sandbox:
    """The context's sandbox, else one made once from ``settings.sandbox`` ('auto' by default)."""
    sandbox = getattr(context, "sandbox", None)
    if sandbox is None:
        from autoannotator.sandbox import get_sandbox

        sandbox = get_sandbox(getattr(settings, "sandbox", None) or "auto",
                              gpu=getattr(settings, "device", "cpu") == "cuda")
        try:
            context.sandbox = sandbox
        except AttributeError:
            pass
    return sandbox


def context_labels(context: Any) -> list[str]:
    task = getattr(getattr(context, "plan", None), "task", None) or getattr(context, "task", None)
    if task is None:
        raise ToolException("no task defined yet: call define_task first")
    return list(task.label_names)


def make_write_deployment_code_tool(settings: Any = None, context: Any = None):
    """Context: run_dir, samples, chat, weak_llm (a weak LLM does not customise), sandbox, plan.task."""
    device = getattr(settings, "device", "auto")
    max_text_chars = getattr(settings, "max_text_chars", 20_000)

    def run(args: WriteDeploymentCodeArgs) -> DeploymentResult:
        try:
            spec = DeploymentSpec(task_labels=context_labels(context), models=[
                ModelDeployment(device=device, max_text_chars=max_text_chars, **m.model_dump()) for m in args.models])
        except ValidationError as exc:
            raise ToolException("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]))
        chat = getattr(context, "chat", None) if args.customise and not getattr(context, "weak_llm", False) else None
        try:
            return write_deployment_code(spec, context.run_dir, context_sandbox(context, settings),
                                         list(getattr(context, "samples", []) or []), chat=chat)
        except SandboxError as exc:
            raise ToolException(str(exc)) from None

    return make_tool(run, name="write_deployment_code", args_schema=WriteDeploymentCodeArgs,
                     result_model=DeploymentResult,
                     description="Write and smoke-test (in the sandbox) the program that deploys the chosen "
                                 "frozen models; falls back to a vetted template if the code fails.")


make_write_deployment_code_tool.RESULT_MODEL = DeploymentResult  # type: ignore[attr-defined]
